"""
The server side of the HTTP connections a real ``twisted.web.client.Agent`` opens on a
``MemoryReactorClock``: the test reads each request it sent and writes the raw answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure


@dataclass
class Received:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Connection:
    protocol: Any
    transport: StringTransport
    read: int = 0
    waiting: list[Received] = field(default_factory=list)


class MemoryHttpServer:
    """
    :param clock: the reactor the client's Agent connects through.
    """

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self._accepted = 0
        self._connections: list[_Connection] = []
        #: every request read so far, in order
        self.received: list[Received] = []

    @property
    def connections(self) -> int:
        """How many connections the client opened."""
        self._accept()
        return len(self._connections)

    def _accept(self) -> None:
        while self._accepted < len(self.clock.tcpClients):
            factory = self.clock.tcpClients[self._accepted][2]
            connector = self.clock.connectors[self._accepted]
            self._accepted += 1
            if connector.stoppedConnecting:  # the client gave up before it was accepted
                continue
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            self._connections.append(_Connection(protocol, transport))

    def closed(self, index: int) -> bool:
        """:returns: whether the client closed (or aborted) connection ``index``."""
        self._accept()
        return bool(self._connections[index].transport.disconnecting)

    def refuse(self) -> None:
        """Refuse the newest connection attempt (nothing listens)."""
        factory = self.clock.tcpClients[-1][2]
        self._accepted = len(self.clock.tcpClients)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def _parse(self, connection: _Connection) -> None:
        data = connection.transport.value()[connection.read :]
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(rest) < length:
                return
            request = Received(method, path, headers, rest[:length])
            connection.read += len(head) + 4 + length
            connection.waiting.append(request)
            self.received.append(request)
            data = rest[length:]

    def pending(self) -> int:
        """:returns: how many requests wait for an answer."""
        self._accept()
        for connection in self._connections:
            self._parse(connection)
        return sum(len(c.waiting) for c in self._connections)

    def drop(self) -> Received:
        """
        Close the connection of the oldest waiting request without answering it.

        :returns: the request dropped.
        """
        assert self.pending(), "no request waits for an answer"
        connection = next(c for c in self._connections if c.waiting)
        request = connection.waiting.pop(0)
        connection.protocol.connectionLost(Failure(ConnectionDone()))
        return request

    def answer(self, status: int = 200, document: Any = None, raw: bytes | None = None) -> Received:
        """
        Answer the oldest waiting request.

        :param status: the status code.
        :param document: a JSON body (ignored when ``raw`` is given).
        :param raw: the exact body.
        :returns: the request answered.
        """
        assert self.pending(), "no request waits for an answer"
        connection = next(c for c in self._connections if c.waiting)
        request = connection.waiting.pop(0)
        body = raw if raw is not None else json.dumps(document).encode()
        connection.protocol.dataReceived(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )
        return request

"""In-memory stand-ins for the upstream side (an IAgent and its responses) and an HTTP client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from zope.interface import implementer

from yatagarasu.assembly import Assembly
from yatagarasu.auth.from_config import AccessControl
from yatagarasu.config import parse_config
from yatagarasu.config.schema import Config
from yatagarasu.reload import Reloader, ReloadReport
from yatagarasu.s3.replicas import ReplicaSet, agent_key
from yatagarasu.web.site import ProxySite


@implementer(IPushProducer)
class FakeUpstreamTransport:
    """What a body protocol sees as its transport: records flow-control calls."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True

    def abortConnection(self) -> None:
        self.stopped = True


@implementer(IResponse)
class FakeResponse:
    """An upstream response whose body the test pushes piece by piece."""

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(
        self,
        code: int,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        length: int | None = None,
    ) -> None:
        self.code = code
        self.phrase = b"X"
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.length: Any = (
            length if length is not None else (len(body) if body is not None else UNKNOWN_LENGTH)
        )
        self.body = body
        self.protocol: Protocol | None = None
        self.transport = FakeUpstreamTransport()

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)  # type: ignore[arg-type]
        if self.body is not None:
            if self.body:
                protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))

    def push(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def end(self, reason: BaseException | None = None) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(reason or ResponseDone()))

    def setPreviousResponse(self, response: IResponse) -> None:
        raise NotImplementedError


@dataclass
class SentRequest:
    method: bytes
    uri: bytes
    headers: Headers
    result: Deferred[IResponse] = field(default_factory=Deferred)
    cancelled: bool = False
    body_producer: Any = None


@implementer(IAgent)
class FakeAgent:
    """Records requests; the test answers each with ``answer`` / ``fail``."""

    def __init__(self) -> None:
        self.sent: list[SentRequest] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        sent = SentRequest(method, uri, headers or Headers(), body_producer=bodyProducer)

        def cancel(d: Deferred[IResponse]) -> None:
            # What twisted.web.client does when a request in flight is cancelled.
            sent.cancelled = True
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        sent.result = Deferred(cancel)
        self.sent.append(sent)
        return sent.result

    def answer(self, response: FakeResponse, index: int = -1) -> None:
        self.sent[index].result.callback(response)

    def fail(self, reason: BaseException, index: int = -1) -> None:
        self.sent[index].result.errback(reason)


def bucket_entry(name: str = "pub", prefix: str = "/pub", **extra: Any) -> dict[str, Any]:
    s3 = {
        "bucket": f"{name}-bucket",
        "endpoint": "http://127.0.0.1:9000",
        "access_key": "AKIDEXAMPLE",
        "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "retry": {"max_attempts": 1},
    }
    s3.update(extra.pop("s3", {}))
    return {"name": name, "path_prefix": prefix, "s3": s3, **extra}


class Harness:
    """A ProxySite on a fake clock with a fake agent per bucket, driven with raw HTTP bytes."""

    def __init__(self, document: dict[str, Any], siblings: Any = None) -> None:
        #: what the next :meth:`reload` reads (the harness's "configuration file")
        self.document = document
        self.config: Config = parse_config(document, {})
        self.clock = MemoryReactorClock()
        #: a fake agent per upstream, by :func:`agent_key` (the bucket name, or
        #: ``bucket/replica`` for a bucket with ``replicas``)
        self.agents = {
            agent_key(b.name, r.name if b.s3.replicas else None): FakeAgent()
            for b in self.config.buckets
            for r in b.s3.upstreams()
        }
        self.reloader = Reloader(
            self.clock,
            lambda: parse_config(self.document, {}),
            agents=self.agents,
            siblings=siblings,
        )
        self.reloader.first()
        self.site: ProxySite = self.assembly.site

    @property
    def assembly(self) -> Assembly:
        """The current generation's assembly."""
        return self.reloader.current

    @property
    def clients(self) -> Mapping[str, ReplicaSet]:
        """The current generation's replica sets (S3 clients behind breakers)."""
        return self.assembly.clients

    @property
    def access(self) -> AccessControl:
        """The current generation's access control."""
        return self.assembly.access

    def reload(self, document: dict[str, Any]) -> ReloadReport:
        """
        Reload with ``document`` as the new configuration file (new buckets get a FakeAgent).

        :returns: the report (the reload completes synchronously on the fake clock).
        """
        self.document = document
        for bucket in document.get("buckets", []):
            if isinstance(bucket, dict) and "name" in bucket:
                self.agents.setdefault(bucket["name"], FakeAgent())
        done = Deferred.fromCoroutine(self.reloader.reload())
        reports: list[ReloadReport] = []
        done.addCallback(reports.append)
        assert reports, "the reload did not complete synchronously"
        return reports[0]

    @property
    def draining(self) -> bool:
        """Whether the proxy behaves as during a graceful shutdown."""
        return self.assembly.lifecycle.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.assembly.lifecycle.draining = value

    def connect(self) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        return channel, transport

    def send(self, raw: bytes) -> tuple[Any, StringTransport]:
        channel, transport = self.connect()
        channel.dataReceived(raw)
        return channel, transport

    def get(self, target: str, *headers: str, method: str = "GET") -> tuple[Any, StringTransport]:
        lines = [f"{method} {target} HTTP/1.1", "Host: proxy", *headers, "", ""]
        return self.send("\r\n".join(lines).encode("utf-8"))


@dataclass
class Parsed:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(raw: bytes) -> Parsed:
    """Parse one HTTP/1.1 response (identity or chunked body) from raw bytes."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest
    return Parsed(status, headers, body)


def lose(channel: Any) -> None:
    """What the reactor does once a transport has flushed and closed."""
    channel.connectionLost(Failure(ConnectionDone()))

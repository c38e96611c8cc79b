"""
An ``HTTPChannel`` whose requests are parsed by llhttp, with the request limits enforced on
the raw bytes before twisted.web builds a request: URI length (414), header bytes (431) and
body size (413).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory

from yatagarasu.config.schema import SecurityLimits
from yatagarasu.http.status import reason_phrase_bytes
from yatagarasu.web.request_id import new_request_id
from yatagarasu.web.request_parser import ParsedRequest, RequestParser
from yatagarasu.web.responses import error_body


class ResponseHeaders(Headers):
    """
    ``Headers`` plus header lines encoded ahead (:attr:`prefix`), written before the others.

    Every response of the proxy carries four headers whose values are known as soon as the
    request arrives: ``X-Request-ID``, ``X-Correlation-ID``, ``Server`` and ``Date``. Encoding
    them in one step instead of four ``setRawHeaders`` calls is a measurable part of a cache
    hit. They are not seen by ``getRawHeaders``.

    :ivar prefix: ``Name: value\\r\\n`` lines.
    """

    __slots__ = ("prefix",)

    def __init__(self, rawHeaders: Any = None) -> None:
        super().__init__(rawHeaders)
        self.prefix = b""


def encode_head(
    version: bytes, code: bytes, reason: bytes, headers: Headers, extra: bytes = b""
) -> bytes:
    """
    A response's status line and headers, ready for the transport.

    twisted.web hands the transport a sequence of four items per header, which the transport
    checks and buffers one by one; joining them first is several times cheaper, and most of
    a small cached response's cost is its head.

    :param headers: the headers (names as ``Headers`` canonicalised them).
    :param extra: header lines already encoded (``Name: value\\r\\n`` each), written last.
    :returns: everything up to and including the blank line.
    """
    head = [version, b" ", code, b" ", reason, b"\r\n"]
    if isinstance(headers, ResponseHeaders):
        head.append(headers.prefix)
    for name, values in headers.getAllRawHeaders():
        for value in values:
            head += (name, b": ", value, b"\r\n")
    head += (extra, b"\r\n")
    return b"".join(head)


class LimitedHTTPChannel(HTTPChannel):
    """
    HTTP/1.1 server channel with yatagarasu's request limits, parsed by llhttp.

    twisted.web's ``HTTPChannel`` answers: its ``Request`` objects, its writing, producers,
    persistence and timeouts are kept. What it no longer does is parse: the bytes go to a
    :class:`~yatagarasu.web.request_parser.RequestParser` (C, one call per read instead of
    Python per line), whose records are handed to twisted.web one at a time, as its own
    parser would have: a pipelined request waits until the response before it is complete,
    and reading pauses while more than ``_optimisticEagerReadSize`` bytes of such requests
    wait.

    :ivar limits: the limits to enforce; set by the site when it builds the channel.
    """

    #: the ``ProxySite`` (set by ``Site.buildProtocol``)
    site: Any
    limits: SecurityLimits = SecurityLimits()
    send_buffer_bytes: int | None = None
    _rejected = False
    _dispatching = False
    _waiting_bytes = 0
    #: reading was paused for pipelined requests (by :meth:`dataReceived`)
    _paused_reading = False
    _peer: Any = None
    _host: Any = None

    def configure(
        self, limits: SecurityLimits, idle_timeout: float, send_buffer_bytes: int | None = None
    ) -> None:
        """
        Apply limits.

        :param limits: the limits to enforce.
        :param idle_timeout: seconds a connection may sit idle between requests.
        :param send_buffer_bytes: ``SO_SNDBUF`` for the client socket (``None``: the kernel's
            autotuning, which lets a slow client pin megabytes of kernel memory).
        """
        self.limits = limits
        self.send_buffer_bytes = send_buffer_bytes
        self.timeOut = int(idle_timeout)

    def connectionMade(self) -> None:
        self._parser = RequestParser(self.limits)
        super().connectionMade()
        self.site.channel_opened(self)
        if self.send_buffer_bytes is not None:
            handle: Any = getattr(self.transport, "getHandle", lambda: None)()
            if isinstance(handle, socket.socket):
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._parser.close()
        super().connectionLost(reason)
        self.site.channel_closed(self)

    def close_when_done(self) -> bool:
        """
        Shutting down: close now when idle, else once the response in progress is complete.

        An idle keep-alive connection is closed at once (the transport still flushes what it
        holds); a busy one stops being persistent, so twisted.web closes it after the
        response's last byte instead of waiting for another request.

        :returns: whether the connection was idle (and is now closing).
        """
        if not self.requests:
            transport: Any = self.transport
            if not transport.disconnecting:
                self.loseConnection()
            return True
        self.persistent = False
        return False

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        self.resetTimeout()
        parser = self._parser
        parser.feed(data)
        if self._handlingRequest and parser.ready:
            # Pipelined requests wait for the response in progress; stop reading more of them.
            self._waiting_bytes += len(data)
            if (
                self._waiting_bytes > self._optimisticEagerReadSize
                and not self._waitingForTransport
            ):
                self._paused_reading = True
                self._networkProducer.pauseProducing()
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand parsed requests to twisted.web, in order, while none is being answered."""
        if self._dispatching:  # a request finished within the loop below: it goes on
            return
        self._dispatching = True
        try:
            ready = self._parser.ready
            while ready and not self._handlingRequest and not self._rejected:
                parsed = ready[0]
                if not self.requests:
                    if not self.persistent:  # data after the last request: dropped
                        ready.clear()
                        return
                    if parsed.error is None and not parsed.head_done:
                        return
                    if parsed.error is None:
                        self._start(parsed)
                request = self.requests[-1] if self.requests else None
                if request is not None:
                    for chunk in parsed.body:
                        request.handleContentChunk(chunk)
                    parsed.body.clear()
                if parsed.error is not None:
                    self.reject(*parsed.error, method=parsed.method, target=parsed.target)
                    return
                if not parsed.complete or self._rejected:
                    return
                ready.popleft()
                self._waiting_bytes = 0
                self._handlingRequest = True
                assert request is not None
                request.requestReceived(parsed.method, parsed.target, parsed.version)
        finally:
            self._dispatching = False

    def _start(self, parsed: ParsedRequest) -> None:
        """Make the ``Request`` for a request whose head is parsed (twisted.web's steps)."""
        if INonQueuedRequestFactory.providedBy(self.requestFactory):
            request = self.requestFactory(self)
        else:
            request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        add = request.requestHeaders.addRawHeader
        for name, value in parsed.headers:
            add(name, value)
        if parsed.cookies:
            request.parseCookies()
        if parsed.connection or parsed.version != b"HTTP/1.1" or self.site.draining():
            self.persistent = self.checkPersistence(request, parsed.version)
        else:  # what checkPersistence says of it, without looking for the field again
            self.persistent = True
        if not parsed.id_fields:
            request.id_fields = False
        request.gotLength(parsed.length)
        if parsed.expect and parsed.version == b"HTTP/1.1":
            expect = request.requestHeaders.getRawHeaders(b"expect", [b""])
            if expect[0].lower() == b"100-continue":
                self._send100Continue()

    def requestDone(self, request: Any) -> None:
        """
        twisted.web's steps for a finished request, less those this channel has no use for.

        Its parser's (joining and re-feeding the bytes it buffered, a timeout it saved) and
        resuming the transport after every request: reading is resumed here only when
        :meth:`dataReceived` paused it (else, when the transport's buffer was full, it is
        resumed by ``resumeProducing`` once the buffer drains, as in twisted.web).
        """
        if request is not self.requests[0]:  # what Request.__eq__ compares
            raise TypeError
        del self.requests[0]
        if self._paused_reading and not self._waitingForTransport:
            self._paused_reading = False
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        self.resetTimeout()  # the connection is idle from now
        self._dispatch()

    def timeoutConnection(self) -> None:
        """
        The idle timeout ran out: close, unless a response is being made.

        twisted.web stops the idle timer for every request and starts a new one after it;
        keeping one timer and starting it again in the rare case it runs out during a
        response is the same rule for one timer operation less per request.
        """
        if self._handlingRequest:
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def getPeer(self) -> Any:
        """The client's address, asked of the transport once per connection (not per request)."""
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def getHost(self) -> Any:
        """The server's address, asked of the transport once (a TCP transport makes a syscall)."""
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        site: Any = getattr(self, "site", None)
        if site is not None and site.draining():
            # Shutting down: answer this request, then close, so clients reconnect elsewhere.
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        persistent: bool = super().checkPersistence(request, version)
        return persistent

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """
        Write the status line and headers as one piece (see :func:`encode_head`).

        :param headers: the response headers (a ``Headers``, as twisted.web passes them).
        """
        transport: ITransport = self.transport  # type: ignore[assignment]
        transport.write(encode_head(version, code, reason, headers))

    def reject(self, status: int, message: str, method: bytes = b"", target: bytes = b"") -> None:
        """
        Answer with a JSON error straight on the transport and close the connection.

        Used while the request is still being parsed or its body is arriving, before the
        request is answered.

        :param status: 400, 413, 414 or 431.
        :param message: what was too large or wrong.
        :param method: the request's method, if it was read.
        :param target: the request's target, if it was read.
        """
        if self._rejected:
            return
        self._rejected = True
        request_id = new_request_id()
        body = error_body(status, message, request_id)
        head = [
            b"HTTP/1.1 %d %s" % (status, reason_phrase_bytes(status)),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"X-Request-ID: " + request_id.encode(),
            b"X-Correlation-ID: " + request_id.encode(),
            b"Connection: close",
        ]
        transport: ITransport = self.transport  # type: ignore[assignment]
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.loseConnection()
        peer: Any = self.getPeer()
        if self.requests:  # the body was too large: the request exists
            method, target = self.requests[-1].method, self.requests[-1].path
        self.site.request_refused(
            str(getattr(peer, "host", peer)),
            method,
            target.split(b"?", 1)[0],
            status,
            request_id,
            len(body),
        )

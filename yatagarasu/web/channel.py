"""
An ``HTTPChannel`` that enforces the request limits on the raw bytes, before twisted.web
builds a request: URI length (414), header bytes (431) and body size (413).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from yatagarasu.config.schema import SecurityLimits
from yatagarasu.http.status import reason_phrase_bytes
from yatagarasu.web.request_id import new_request_id
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
    HTTP/1.1 server channel with yatagarasu's request limits.

    :ivar limits: the limits to enforce; set by the site when it builds the channel.
    """

    #: the ``ProxySite`` (set by ``Site.buildProtocol``)
    site: Any
    limits: SecurityLimits = SecurityLimits()
    send_buffer_bytes: int | None = None
    _expect_request_line = True
    _header_bytes = 0
    _rejected = False

    def configure(
        self, limits: SecurityLimits, idle_timeout: float, send_buffer_bytes: int | None = None
    ) -> None:
        """
        Apply limits, leaving room so that twisted.web's own generic limits never fire first.

        :param limits: the limits to enforce.
        :param idle_timeout: seconds a connection may sit idle between requests.
        :param send_buffer_bytes: ``SO_SNDBUF`` for the client socket (``None``: the kernel's
            autotuning, which lets a slow client pin megabytes of kernel memory).
        """
        self.limits = limits
        self.send_buffer_bytes = send_buffer_bytes
        self.MAX_LENGTH = max(limits.max_uri_length, limits.max_header_size) + 1024
        self.totalHeadersSize = limits.max_uri_length + limits.max_header_size + 4096
        self.timeOut = int(idle_timeout)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channel_opened(self)
        if self.send_buffer_bytes is not None:
            handle: Any = getattr(self.transport, "getHandle", lambda: None)()
            if isinstance(handle, socket.socket):
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
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
        if not self._rejected:
            HTTPChannel.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        if self._expect_request_line:
            if line:
                self._expect_request_line = False
                self._header_bytes = 0
                if len(line) > self.limits.max_uri_length and self._target_too_long(line):
                    return
        else:
            self._header_bytes += len(line) + 2
            if self._header_bytes > self.limits.max_header_size:
                self.reject(431, f"request headers larger than {self.limits.max_header_size} bytes")
                return
        HTTPChannel.lineReceived(self, line)

    def _target_too_long(self, request_line: bytes) -> bool:
        parts = request_line.split(b" ")
        if len(parts) == 3 and len(parts[1]) > self.limits.max_uri_length:
            self.reject(414, f"request target longer than {self.limits.max_uri_length} bytes")
            return True
        return False

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._expect_request_line:
            self.reject(414, f"request target longer than {self.limits.max_uri_length} bytes")
        else:
            self.reject(431, f"request headers larger than {self.limits.max_header_size} bytes")

    def headerReceived(self, line: bytes) -> bool:
        if line[:14].lower() == b"content-length":
            name, _, value = line.partition(b":")
            length = value.strip()
            too_large = length.isdigit() and int(length) > self.limits.max_body_size
            if too_large and name.strip().lower() == b"content-length":
                self.reject(413, f"request body larger than {self.limits.max_body_size} bytes")
                return False
        ok: bool = HTTPChannel.headerReceived(self, line)
        return ok

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

    def allContentReceived(self) -> None:
        self._expect_request_line = True
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own parser errors (bad Content-Length, too many headers...): our JSON.
        self.reject(400, "malformed HTTP request")

    def reject(self, status: int, message: str) -> None:
        """
        Answer with a JSON error straight on the transport and close the connection.

        Used while the request is still being parsed, so no ``Request`` exists yet.

        :param status: 400, 413, 414 or 431.
        :param message: what was too large.
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
        peer: Any = transport.getPeer()
        method = getattr(self, "_command", b"")
        target = getattr(self, "_path", b"").split(b"?", 1)[0]
        if not method and self.requests:  # the body was too large: the request exists
            method, target = self.requests[-1].method, self.requests[-1].path
        self.site.request_refused(
            str(getattr(peer, "host", peer)), method, target, status, request_id, len(body)
        )

"""
HTTP/1.1 request parsing by llhttp (the ``httptools`` binding), with the proxy's size limits.

:class:`RequestParser` turns the bytes of a connection into :class:`ParsedRequest` records, in
order: a record is made when a request starts, filled as its head and body arrive, and marked
complete at its end. The channel (:mod:`yatagarasu.web.channel`) takes records off the front and
hands them to twisted.web one at a time; records behind the front are pipelined requests that
wait for the answer in progress. Nothing here knows about twisted.web.

A request that breaks a limit or the grammar ends the parsing: the last record carries the
error the channel answers with once it gets there (414, 431, 413 or 400).
"""

from __future__ import annotations

import re
from collections import deque

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from yatagarasu.config.schema import SecurityLimits

#: twisted.web's own limit on the number of header fields of a request
MAX_HEADERS = 500

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
#: fields whose presence a record notes (by name length, then lower-case name), so that
#: requests without them are not searched for them
_NOTED = {
    6: {b"cookie": "cookies", b"expect": "expect"},
    10: {b"connection": "connection"},
    12: {b"x-request-id": "id_fields"},
    16: {b"x-correlation-id": "id_fields"},
}
#: the answer to a request that cannot be parsed
_MALFORMED = (400, "malformed HTTP request")
#: an RFC 9110 token (a method)
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _line_start(head: bytes) -> int:
    """:returns: where a head's request line starts (llhttp skips empty lines before it)."""
    return len(head) - len(head.lstrip(b"\r\n"))


class ParsedRequest:
    """
    One request as parsed so far.

    :ivar method: the method (``b""`` until the request line is read).
    :ivar target: the request target, as sent.
    :ivar version: ``HTTP/1.1`` or ``HTTP/1.0``.
    :ivar headers: the header fields in order, values without surrounding whitespace.
    :ivar length: the body's ``Content-Length``; ``None`` for a chunked body; ``0`` for none.
    :ivar body: body chunks not yet taken by the channel.
    :ivar head_done: whether the whole head has been read.
    :ivar complete: whether the whole request (body included) has been read.
    :ivar error: ``(status, message)`` to answer instead of serving it, or ``None``.
    :ivar cookies: whether it has a ``Cookie`` field.
    :ivar expect: whether it has an ``Expect`` field.
    :ivar connection: whether it has a ``Connection`` field.
    :ivar id_fields: whether it has an ``X-Request-ID`` or ``X-Correlation-ID`` field.
    """

    __slots__ = (
        "_body_bytes",
        "_header_bytes",
        "_target",
        "body",
        "complete",
        "connection",
        "cookies",
        "error",
        "expect",
        "head_done",
        "headers",
        "id_fields",
        "length",
        "method",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self._target: list[bytes] = []
        self.version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = 0
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.error: tuple[int, str] | None = None
        self.cookies = False
        self.expect = False
        self.connection = False
        self.id_fields = False
        self._header_bytes = 0
        self._body_bytes = 0

    @property
    def target(self) -> bytes:
        """The request target (``b""`` until it is read)."""
        target = self._target
        if len(target) != 1:
            target[:] = [b"".join(target)]
        return target[0]


class _Refused(Exception):
    """Raised in a parser callback to stop parsing at a limit."""


class RequestParser:
    """
    llhttp fed with a connection's bytes, making :class:`ParsedRequest` records.

    The head of a request is gathered here until its blank line, so the limits see exactly
    its bytes (also while it is incomplete: a slow or endless head is refused as soon as it
    is too large) and llhttp parses it in one call; a body with a ``Content-Length`` is cut
    off at its length. A chunked body's end is only known to llhttp: after one, every later
    byte goes straight to it, and a head that is still incomplete is then measured by the
    bytes fed since it began (an upper bound).

    :ivar ready: the records, oldest first; the channel pops them.
    :ivar stopped: whether parsing ended (an error; later bytes are ignored).
    """

    def __init__(self, limits: SecurityLimits) -> None:
        self._max_uri = limits.max_uri_length
        self._max_head = limits.max_header_size
        self._max_body = limits.max_body_size
        self._too_long = (414, f"request target longer than {self._max_uri} bytes")
        self._too_large = (431, f"request headers larger than {self._max_head} bytes")
        self._body_too_large = (413, f"request body larger than {self._max_body} bytes")
        self._parser: HttpRequestParser | None = HttpRequestParser(self)
        self.ready: deque[ParsedRequest] = deque()
        self.stopped = False
        self._current: ParsedRequest | None = None
        #: bytes of an incomplete head (the start of the next request)
        self._head = b""
        #: body bytes of the current request still to come (``Content-Length``)
        self._body_left = 0
        #: whether llhttp takes every byte (after a chunked body)
        self._streaming = False
        #: bytes fed while the current request's head was incomplete (when streaming)
        self._head_fed = 0
        #: the method sent, while llhttp parses its head with another (an unknown method)
        self._method: bytes | None = None

    def close(self) -> None:
        """Drop llhttp (it refers back to this object) and the records: the connection is gone."""
        self._parser = None
        self.ready.clear()
        self.stopped = True

    def feed(self, data: bytes) -> None:
        """
        Parse ``data``, the next bytes of the connection.

        :param data: bytes as received.
        """
        if self.stopped:
            return
        if self._streaming:
            self._feed_streaming(data)
            return
        for _ in range(len(data) + 1):  # bounded: each round consumes bytes
            if self._body_left:
                body, data = data[: self._body_left], data[self._body_left :]
                self._body_left -= len(body)
                self._execute(body)
            if not data or self.stopped:
                return
            if self._streaming:
                self._feed_streaming(data)
                return
            held = len(self._head)
            whole = self._head + data if held else data
            end = whole.find(b"\r\n\r\n", max(0, held - 3))  # not again what was searched
            if end < 0:
                self._head = whole
                self._check_head(whole, complete=False)
                return
            self._head = b""
            head, data = whole[: end + 4], whole[end + 4 :]
            if self._check_head(head, complete=True):
                self._execute(head, whole_head=True)

    def _check_head(self, head: bytes, complete: bool) -> bool:
        """
        Refuse a head (complete or not yet) whose request target or header fields are too large.

        :returns: whether the head is within the limits.
        """
        start = _line_start(head)
        line_end = head.find(b"\r\n", start)
        if line_end < 0:
            if len(head) - start > self._max_uri + 1024:
                self._refuse(*self._too_long)
                return False
            return True
        parts = head[start:line_end].split(b" ")
        if len(parts) == 3 and len(parts[1]) > self._max_uri:
            self._refuse(*self._too_long, parts)
            return False
        header_bytes = len(head) - line_end - 2 - (2 if complete else 0)
        if header_bytes > self._max_head:
            self._refuse(*self._too_large, parts)
            return False
        return True

    def _feed_streaming(self, data: bytes) -> None:
        current = self._current
        if current is None or current.complete or not current.head_done:
            self._head_fed += len(data)
            if self._head_fed > self._max_uri + self._max_head + 4096:
                self._refuse(*self._too_large)
                return
        self._execute(data)

    def _execute(self, data: bytes, whole_head: bool = False) -> None:
        parser = self._parser
        if parser is None:
            return
        for _ in range(len(data) + 1):  # bounded: each round consumes bytes
            try:
                parser.feed_data(data)
                return
            except HttpParserUpgrade as upgrade:
                # An Upgrade or CONNECT request is served as a plain request; what follows
                # its head is parsed as the next request.
                data = data[upgrade.args[0] :]
                if not data:
                    return
            except HttpParserCallbackError as error:
                if not isinstance(error.__context__, _Refused):
                    raise
                return
            except HttpParserInvalidMethodError:
                if whole_head and self._unknown_method(data):
                    return
                self._refuse(*_MALFORMED)
                return
            except HttpParserError:
                self._refuse(*_MALFORMED)
                return

    def _unknown_method(self, head: bytes) -> bool:
        """
        Parse a head whose method llhttp does not know (it knows a fixed list) but which is a
        valid token, so that it gets the proxy's own answer to an unsupported method (405),
        as any other: llhttp parses it with a method it knows in its place.

        :param head: the whole head (from its request line to its blank line).
        :returns: whether it was parsed.
        """
        method, space, rest = head[_line_start(head) :].partition(b" ")
        if not space or _TOKEN.fullmatch(method) is None:
            return False
        if self.ready and self.ready[-1] is self._current:  # begun by the failed parse
            self.ready.pop()
        self._parser = HttpRequestParser(self)  # the old one stays in its error state
        self._method = method
        try:
            self._execute(b"PUT " + rest)
        finally:
            self._method = None
        return True

    def _refuse(self, status: int, message: str, line: list[bytes] | None = None) -> None:
        current = self._current
        if current is None or current.complete:
            current = ParsedRequest()
            if line is not None and len(line) == 3:
                current.method, current._target = line[0], [line[1]]
            self.ready.append(current)
        current.error = (status, message)
        self.stopped = True

    # -- llhttp callbacks (called by the parser within feed) ---------------------------------

    def on_message_begin(self) -> None:
        self._current = current = ParsedRequest()
        self._head_fed = 0
        self.ready.append(current)

    def on_url(self, url: bytes) -> None:
        current: ParsedRequest = self._current  # type: ignore[assignment]
        target = current._target
        target.append(url)
        if self._streaming and sum(map(len, target)) > self._max_uri:
            self._refuse(*self._too_long)
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        current: ParsedRequest = self._current  # type: ignore[assignment]
        value = value.strip(b" \t")
        headers = current.headers
        headers.append((name, value))
        if self._streaming:
            current._header_bytes += len(name) + len(value) + 4
            if current._header_bytes > self._max_head:
                self._refuse(*self._too_large)
                raise _Refused
        if len(headers) > MAX_HEADERS:
            self._refuse(*_MALFORMED)
            raise _Refused
        if len(name) == 14 and name.lower() == b"content-length":
            length = int(value)  # llhttp checked that it is a number
            if length > self._max_body:
                self._refuse(*self._body_too_large)
                raise _Refused
            current.length = length
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            current.length = None
        elif len(name) in _NOTED:
            noted = _NOTED[len(name)].get(name.lower())
            if noted is not None:
                setattr(current, noted, True)

    def on_headers_complete(self) -> None:
        current: ParsedRequest = self._current  # type: ignore[assignment]
        parser: HttpRequestParser = self._parser  # type: ignore[assignment]
        current.method = self._method or parser.get_method()
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._refuse(*_MALFORMED)
            raise _Refused
        current.version = version
        current.head_done = True
        if current.length is None:
            self._streaming = True
        elif not self._streaming:
            self._body_left = current.length

    def on_body(self, chunk: bytes) -> None:
        current: ParsedRequest = self._current  # type: ignore[assignment]
        current._body_bytes += len(chunk)
        if current._body_bytes > self._max_body:
            self._refuse(*self._body_too_large)
            raise _Refused
        current.body.append(chunk)

    def on_message_complete(self) -> None:
        current: ParsedRequest = self._current  # type: ignore[assignment]
        current.complete = True

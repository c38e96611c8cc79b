"""
One persistent HTTP/1.1 connection to S3: requests written in one piece, responses parsed by
llhttp (``httptools.HttpResponseParser``, C) and handed on as an ``IResponse``.

The connection carries one request at a time (no pipelining) and goes back to its pool only
after its response was read to the end and allowed the connection to persist. The response's
body reaches the protocol given to ``IResponse.deliverBody``; that protocol's transport is the
response itself, an ``IPushProducer`` that pauses, resumes and aborts the connection (a slow
client pauses the S3 socket; a client that went away aborts it).

No object of one exchange refers back to another in a cycle: the parser reports to a
:class:`_Message` that refers to nothing, and the connection and its response drop each other
when the exchange ends, so an aborted stream is freed by reference counting alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from httptools import HttpParserError, HttpResponseParser
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

#: hop-by-hop fields, kept out of ``IResponse.headers`` as twisted.web's client does
#: (``Content-Length`` stays for HEAD, where it describes the object, not this body)
_CONNECTION_FIELDS = frozenset(
    (
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    )
)
_NO_BODY = frozenset((204, 304))

#: how every whole body ends (one instance: it has no traceback and nothing changes it)
_DONE = Failure(ResponseDone())

#: field name as received -> the key ``Headers`` files it under (bounded: names are few)
_KEYS: dict[bytes, bytes] = {}
_MAX_KEYS = 1024


def _key(name: bytes) -> bytes:
    """The key ``Headers`` keeps ``name`` under, learnt from ``Headers`` itself once."""
    key = _KEYS.get(name)
    if key is None:
        probe = Headers()
        probe.addRawHeader(name, b"")
        key = next(iter(probe._rawHeaders))
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[name] = key
    return key


class StaleConnection(Exception):
    """A reused connection was closed by S3 before any byte of the answer: send again."""


class _Message:
    """What the parser reported of one response (the parser's callbacks land here)."""

    __slots__ = ("body", "complete", "head", "headers", "headers_done", "status")

    def __init__(self, head: bool) -> None:
        self.head = head
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.head:
            self.complete = True  # the answer to HEAD has no body, whatever its length says

    def on_body(self, data: bytes) -> None:
        if not self.complete:
            self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


@implementer(IResponse, IPushProducer)
class S3Response:
    """
    S3's answer: status and fields at once, the body to whoever asks for it.

    Body bytes that arrive before :meth:`deliverBody` are kept and handed over first.
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(
        self, code: int, phrase: bytes, headers: Headers, length: Any, connection: S3Connection
    ) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._connection: S3Connection | None = connection
        self._consumer: Protocol | None = None
        self._buffer: list[bytes] = []
        self._ended: Failure | None = None
        self._delivered = False
        self._stopped = False

    def deliverBody(self, protocol: Protocol) -> None:
        if self._delivered:
            raise RuntimeError("the body of this response was already delivered")
        self._delivered = True
        protocol.makeConnection(self)
        buffered, self._buffer = self._buffer, []
        for data in buffered:
            if self._stopped:
                break
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)
        else:
            self._consumer = protocol

    def setPreviousResponse(self, response: IResponse) -> None:
        raise NotImplementedError("S3 responses are never redirects followed here")

    # The connection's side.

    def _data(self, chunks: list[bytes]) -> None:
        consumer = self._consumer
        if consumer is None:
            if not self._delivered:
                self._buffer.extend(chunks)
            return
        for data in chunks:
            if self._stopped:
                return
            consumer.dataReceived(data)

    def _end(self, reason: Failure) -> None:
        self._connection = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.connectionLost(reason)
        elif not self._delivered:
            self._ended = reason

    # IPushProducer: the body consumer's flow control.

    def pauseProducing(self) -> None:
        if self._connection is not None:
            self._connection.pause()

    def resumeProducing(self) -> None:
        if self._connection is not None:
            self._connection.resume()

    def stopProducing(self) -> None:
        self._stopped = True
        if self._connection is not None:
            self._connection.abort()


class S3Connection(Protocol):
    """
    One connection of a pool.

    :param release: called once the connection finished an exchange and may be reused.
    :param lost: called once when the connection closed.
    """

    def __init__(
        self,
        release: Callable[[S3Connection], None],
        lost: Callable[[S3Connection], None],
    ) -> None:
        self._release = release
        self._lost = lost
        self._message: _Message | None = None
        self._parser: HttpResponseParser | None = None
        self._waiting: Deferred[IResponse] | None = None
        self._response: S3Response | None = None
        self._received = False
        self._aborted = False
        self._paused = False
        self._until_close = False
        self._persistent = False
        #: exchanges completed on this connection
        self.served = 0
        #: fires when the connection has closed
        self.closed: Deferred[None] = Deferred()
        #: when it last went back to its pool (the pool's clock)
        self.idle_since = 0.0

    def send(
        self, method: bytes, target: bytes, fields: bytes, body: IBodyProducer | None = None
    ) -> Deferred[IResponse]:
        """
        Write one request.

        :param method: ``GET``, ``HEAD``, ``PUT``.
        :param target: the request target (``/bucket/key?query``).
        :param fields: the header block, each field ending in CRLF (``Host`` included).
        :param body: a body of known ``length``, or ``None``.
        :returns: fires with the response once its head arrived; fails with
            :class:`StaleConnection` when a reused connection closed before answering, else
            ``ResponseNeverReceived``/``ResponseFailed``; cancelling it aborts the connection.
        """
        message = self._message = _Message(method == b"HEAD")
        self._parser = HttpResponseParser(message)
        self._received = False
        self._until_close = False
        waiting: Deferred[IResponse] = Deferred(self._cancelled)
        self._waiting = waiting
        transport: Any = self.transport
        if body is None:
            transport.write(b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, fields))
        else:
            transport.write(
                b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n"
                % (method, target, fields, body.length)
            )
            body.startProducing(transport)
        return waiting

    def _cancelled(self, waiting: Deferred[IResponse]) -> None:
        # Our client went away, or S3 took too long: this connection's answer is unwanted.
        self._waiting = None
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        message = self._message
        parser = self._parser
        if message is None or parser is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._received = True
        try:
            parser.feed_data(data)
        except HttpParserError as e:
            self._broken(Failure(e))
            return
        response = self._response
        if response is None:
            if message.headers_done:
                self._answer(message)
            return
        if message.body:
            chunks, message.body = message.body, []
            response._data(chunks)
        if message.complete and self._message is message:
            self._finish(response)

    def _answer(self, message: _Message) -> None:
        waiting, self._waiting = self._waiting, None
        parser = self._parser
        assert parser is not None
        code = parser.get_status_code()
        # Filed straight into the Headers' table: llhttp has already refused what Headers would
        # check (a name that is not a token, CR or LF in a value).
        raw: dict[bytes, list[bytes]] = {}
        length: Any = UNKNOWN_LENGTH
        chunked = False
        # HTTP/1.1 persists unless told otherwise; HTTP/1.0 only when told so.
        persistent = parser.get_http_version() == "1.1"
        head = message.head
        for name, value in message.headers:
            lower = name.lower()
            if lower in _CONNECTION_FIELDS:
                if lower == b"content-length":
                    length = int(value)  # llhttp checked the digits and any duplicates
                    if not head:
                        continue
                elif lower == b"transfer-encoding":
                    chunked = True
                    continue
                else:
                    if lower == b"connection":
                        tokens = value.lower()
                        persistent = b"close" not in tokens and (
                            persistent or b"keep-alive" in tokens
                        )
                    continue
            key = _key(name)
            values = raw.get(key)
            if values is None:
                raw[key] = [value]
            else:
                values.append(value)
        headers = Headers()
        headers._rawHeaders = raw
        if head or code in _NO_BODY:
            length = 0
        elif chunked:
            length = UNKNOWN_LENGTH
        else:
            self._until_close = length is UNKNOWN_LENGTH
        self._persistent = persistent and not self._until_close
        response = S3Response(code, b"", headers, length, self)
        self._response = response
        if message.body:
            chunks, message.body = message.body, []
            response._data(chunks)
        if message.complete:
            self._finish(response)
        if waiting is not None:
            waiting.callback(response)

    def _finish(self, response: S3Response) -> None:
        """The response was read to its end: hand the connection back, then end the body."""
        reusable = self._persistent and not self._aborted
        self._detach()
        self.served += 1
        transport: Any = self.transport
        if reusable:
            if self._paused:
                self._paused = False
                transport.resumeProducing()
            self._release(self)
        else:
            transport.loseConnection()
        response._end(_DONE)

    def _detach(self) -> None:
        self._message = None
        self._parser = None
        self._response = None

    def _broken(self, reason: Failure) -> None:
        """S3 sent something that is not HTTP: fail the exchange, drop the connection."""
        self.abort()
        waiting, self._waiting = self._waiting, None
        response = self._response
        self._detach()
        if waiting is not None:
            waiting.errback(ResponseFailed([reason]))
        elif response is not None:
            response._end(Failure(ResponseFailed([reason])))

    # Flow control on behalf of the body's consumer.

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def abort(self) -> None:
        """Drop the connection now (it will never be reused)."""
        if not self._aborted and self.transport is not None:
            self._aborted = True
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> Deferred[None]:
        """Close an idle connection; the result fires once it is closed."""
        if self.transport is not None:
            self.transport.loseConnection()
        return self.closed

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        waiting, self._waiting = self._waiting, None
        response = self._response
        self._detach()
        self.transport = None
        self._lost(self)
        self._release = self._lost = _nothing
        if waiting is not None:
            if self.served and not self._received:
                waiting.errback(StaleConnection())
            else:
                waiting.errback(ResponseNeverReceived([reason]))
        elif response is not None:
            if self._until_close and not self._aborted:
                # Neither a length nor chunks: the body ends where the connection does.
                response._end(Failure(PotentialDataLoss()))
            else:
                response._end(Failure(ResponseFailed([reason])))
        self.closed.callback(None)


def _nothing(connection: S3Connection) -> None:
    """What a closed connection tells its pool: nothing more."""

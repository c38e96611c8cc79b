"""
Relay an upstream response body to a client request, with backpressure.

The relay is the body protocol handed to ``IResponse.deliverBody`` and, at the same time, the
push producer registered on the client request: when the client's socket buffer is full,
twisted.web pauses the relay, which pauses the upstream transport, so a slow client holds
back S3 instead of filling our memory. While the client keeps up, a body that stalls for
longer than the idle timeout is given up on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.server import Request
from zope.interface import implementer


class BodyStalled(Exception):
    """The upstream body sent nothing for longer than the idle timeout."""


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """
    Copy an upstream body into ``request`` while honouring the client's flow control, and
    hand every chunk to ``sink`` too (the cache filling itself).

    With no request (the client needs no body: a 304 or 412 answered from the response
    headers while the cache still wants the object), the body is read at S3's pace.

    :ivar done: fires with the number of body bytes relayed once the upstream body ended
        cleanly, or fails with the reason it did not (connection lost, stalled, cancelled).
    """

    def __init__(
        self,
        request: Request | None,
        clock: IReactorTime,
        idle_seconds: float,
        sink: Callable[[bytes], None] | None = None,
    ) -> None:
        self._request = request
        self._sink = sink
        self._clock = clock
        self._idle_seconds = idle_seconds
        self._idle_call: IDelayedCall | None = None
        self._paused = False
        self._stalled = False
        self.relayed = 0
        self.done: Deferred[int] = Deferred(lambda _: self.stopProducing())

    # Protocol: the upstream side.

    def connectionMade(self) -> None:
        if self._request is not None:
            self._request.registerProducer(self, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self.relayed += len(data)
        if self._sink is not None:
            self._sink(data)
        if self._request is not None:
            self._request.write(data)
        if not self._paused:
            self._arm()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._disarm()
        if self._request is not None:
            self._request.unregisterProducer()
        if self.done.called:
            return
        if self._stalled:
            self.done.errback(BodyStalled(f"no body bytes from S3 for {self._idle_seconds:g}s"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(self.relayed)
        else:
            self.done.errback(reason)

    # IPushProducer: the client side.

    def pauseProducing(self) -> None:
        self._paused = True
        self._disarm()
        self._upstream("pauseProducing")

    def resumeProducing(self) -> None:
        self._paused = False
        self._arm()
        self._upstream("resumeProducing")

    def stopProducing(self) -> None:
        self._disarm()
        self._upstream("stopProducing")

    def _upstream(self, method: str) -> None:
        transport: Any = self.transport
        if transport is not None:
            getattr(transport, method)()

    def _arm(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_seconds)
        else:
            self._idle_call = self._clock.callLater(self._idle_seconds, self._stall)

    def _disarm(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _stall(self) -> None:
        self._idle_call = None
        self._stalled = True
        self._upstream("stopProducing")


class BoundedCollector(Protocol):
    """
    Collect a small body (an S3 error document) up to ``limit`` bytes, then stop reading.

    :ivar done: fires with the bytes collected (possibly truncated at ``limit``).
    """

    def __init__(self, limit: int = 64 * 1024) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        room = self._limit - self._size
        if room > 0:
            self._chunks.append(data[:room])
            self._size += min(room, len(data))
        if self._size >= self._limit:
            self._stop()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(b"".join(self._chunks))

    def _stop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


@implementer(IPullProducer)
class FileRangeProducer:
    """
    Send ``length`` bytes of an open file, from ``offset``, to a request, pulled at the
    client's pace (64 KiB reads); finish the request at the end and close the file.

    :param request: the request (headers already set).
    :param body: the open file; the producer closes it.
    :param offset: where the bytes start.
    :param length: how many to send.
    """

    CHUNK = 64 * 1024

    def __init__(self, request: Request, body: IO[bytes], offset: int, length: int) -> None:
        self._request = request
        self._body = body
        self._remaining = length
        body.seek(offset)

    def start(self) -> None:
        """Register with the request and send the first chunk."""
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._body.closed:
            return
        data = self._body.read(min(self.CHUNK, self._remaining)) if self._remaining else b""
        if data:
            self._remaining -= len(data)
            self._request.write(data)
        if not data or self._remaining == 0:
            self._body.close()
            self._request.unregisterProducer()
            if not data and self._remaining:
                # The file is shorter than promised: never let a truncated body look whole.
                transport: Any = self._request.channel.transport if self._request.channel else None
                if transport is not None:
                    transport.abortConnection()
                return
            self._request.finish()

    def stopProducing(self) -> None:
        self._body.close()

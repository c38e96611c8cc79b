"""
Relay an upstream response body to a client request, with backpressure.

The relay is the body protocol handed to ``IResponse.deliverBody`` and, at the same time, the
push producer registered on the client request: when the client's socket buffer is full,
twisted.web pauses the relay, which pauses the upstream transport, so a slow client holds
back S3 instead of filling our memory. While the client keeps up, a body that stalls for
longer than the idle timeout is given up on.

How much a stream may queue in the process before S3 is paused depends on the client. Every
stream starts with :data:`SLOW_BUFFER_BYTES`, which keeps a slow reader's share of the process
small; once the client has taken :data:`FAST_AFTER_BYTES` with no pause of
:data:`SLOW_PAUSE_SECONDS` or more, it gets ``buffer_bytes`` (64 KiB by default: as much as
one read from S3, so a client that keeps up is not paused for every read). A long pause puts
it back on the small buffer. The client's kernel send buffer fills at full speed however slow
the client is, which is why the proof takes several mebibytes, not one short pause.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.server import Request
from zope.interface import implementer

#: a pause of the client at least this long makes it a slow client (its buffer shrinks)
SLOW_PAUSE_SECONDS = 0.01
#: what a slow client may queue in the process before S3 is paused (at most ``buffer_bytes``)
SLOW_BUFFER_BYTES = 16384
#: bytes a client takes without a long pause before it gets the large buffer (more than the
#: 2 MiB a kernel send buffer of ``socket_send_buffer_bytes: 1048576`` holds)
FAST_AFTER_BYTES = 4 * 1024 * 1024


class BodyStalled(Exception):
    """The upstream body sent nothing for longer than the idle timeout."""


class ClientStalled(Exception):
    """The client read nothing for longer than the send timeout; its connection was cut."""


@dataclass(frozen=True)
class StreamTimeouts:
    """
    :ivar idle_seconds: how long the upstream body may stall while the client keeps up.
    :ivar send_seconds: how long a client may stop reading before it is disconnected.
    :ivar buffer_bytes: bytes a streamed response may queue in user space for a client
        that keeps up before S3 is paused (the client transport's ``bufferSize``); other
        clients get ``min(buffer_bytes, SLOW_BUFFER_BYTES)``.
    """

    idle_seconds: float
    send_seconds: float
    buffer_bytes: int = 65536


def abort_client(request: Request) -> None:
    """Cut a client connection (a response that cannot be completed must not look whole)."""
    channel: Any = request.channel
    if channel is not None and channel.transport is not None:
        channel.transport.abortConnection()


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """
    Copy an upstream body into ``request`` while honouring the client's flow control, and
    hand every chunk to ``sink`` too (the cache filling itself).

    With ``backpressure`` (the default) the relay is the client request's push producer: a
    client that cannot keep up pauses the upstream transport. Without it (a body small enough
    to buffer, being cached) the body is read at S3's pace. With no request at all (the client
    was answered from the headers) the body only goes to ``sink``.

    :ivar done: fires with the number of body bytes relayed once the upstream body ended
        cleanly, or fails with the reason it did not (connection lost, stalled, cancelled).
    """

    def __init__(
        self,
        request: Request | None,
        clock: IReactorTime,
        timeouts: StreamTimeouts,
        sink: Callable[[bytes], None] | None = None,
        *,
        backpressure: bool = True,
    ) -> None:
        self._request = request
        self._sink = sink
        self._clock = clock
        self._timeouts = timeouts
        self._backpressure = backpressure and request is not None
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._paused_at = 0.0
        self._client: Any = None  # the client transport, when its buffer size can be set
        self._kept_up = 0  # bytes relayed since the client's last long pause
        self._failure: Exception | None = None
        self.relayed = 0
        self.done: Deferred[int] = Deferred(lambda _: self.stopProducing())

    # Protocol: the upstream side.

    def connectionMade(self) -> None:
        request = self._request
        if request is not None and (request.finished or request._disconnected):
            self._failure = CancelledError("the client went away")
            self._upstream("stopProducing")
            return
        if self._backpressure:
            assert request is not None
            transport: Any = request.channel.transport if request.channel else None
            if transport is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = min(self._timeouts.buffer_bytes, SLOW_BUFFER_BYTES)
                self._client = transport
            request.registerProducer(self, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self.relayed += len(data)
        if self._sink is not None:
            self._sink(data)
        request = self._request
        if request is not None and not request._disconnected:
            request.write(data)
            if self._kept_up < FAST_AFTER_BYTES and self._client is not None:
                self._kept_up += len(data)
                if self._kept_up >= FAST_AFTER_BYTES:
                    self._client.bufferSize = self._timeouts.buffer_bytes
        if not self._paused:
            self._arm()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._disarm()
        request = self._request
        if self._backpressure and request is not None and request.channel is not None:
            request.unregisterProducer()
        # Break the request <-> relay references now: an aborted stream must not wait for
        # the cyclic garbage collector to release the request and its buffers.
        self._request = None
        self._sink = None
        self._client = None
        if self.done.called:
            return
        if self._failure is not None:
            self.done.errback(self._failure)
        elif isinstance(reason.value, ResponseDone | PotentialDataLoss):
            self.done.callback(self.relayed)
        else:
            reason.cleanFailure()
            self.done.errback(reason)

    # IPushProducer: the client side.

    def pauseProducing(self) -> None:
        self._paused = True
        self._paused_at = self._clock.seconds()
        self._upstream("pauseProducing")
        self._arm()

    def resumeProducing(self) -> None:
        self._paused = False
        client = self._client
        if client is not None and self._clock.seconds() - self._paused_at >= SLOW_PAUSE_SECONDS:
            self._kept_up = 0
            client.bufferSize = min(self._timeouts.buffer_bytes, SLOW_BUFFER_BYTES)
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
        # One timer: S3 must keep sending while the client keeps up (idle), and the client
        # must keep reading while S3 waits for it (send).
        delay = self._timeouts.send_seconds if self._paused else self._timeouts.idle_seconds
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._paused:
            seconds = self._timeouts.send_seconds
            self._failure = ClientStalled(f"the client read nothing for {seconds:g}s")
            if self._request is not None:
                abort_client(self._request)
        else:
            seconds = self._timeouts.idle_seconds
            self._failure = BodyStalled(f"no body bytes from S3 for {seconds:g}s")
        self._upstream("stopProducing")


@implementer(IPullProducer)
class FileRangeProducer:
    """
    Send ``length`` bytes of an open file, from ``offset``, to a request, pulled at the
    client's pace (64 KiB reads); finish the request at the end and close the file. A
    client that reads nothing for ``send_seconds``, or a read error, cuts the connection.

    :param request: the request (headers already set).
    :param body: the open file; the producer closes it.
    :param offset: where the bytes start.
    :param length: how many to send.
    :param clock: time source.
    :param send_seconds: how long the client may stop reading.
    """

    CHUNK = 64 * 1024

    def __init__(
        self,
        request: Request,
        body: IO[bytes],
        offset: int,
        length: int,
        clock: IReactorTime,
        send_seconds: float,
    ) -> None:
        self._request = request
        self._body = body
        self._remaining = length
        self._clock = clock
        self._send_seconds = send_seconds
        self._timer: IDelayedCall | None = None
        body.seek(offset)

    def start(self) -> None:
        """Register with the request and send the first chunk."""
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._body.closed:
            return
        try:
            data = self._body.read(min(self.CHUNK, self._remaining)) if self._remaining else b""
        except OSError:
            data = b""
        if data:
            self._remaining -= len(data)
            self._request.write(data)
        if not data or self._remaining == 0:
            self._close()
            self._request.unregisterProducer()
            if self._remaining:
                abort_client(self._request)  # never let a truncated body look whole
                return
            self._request.finish()
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._send_seconds)
        else:
            self._timer = self._clock.callLater(self._send_seconds, self._stalled)

    def stopProducing(self) -> None:
        self._close()

    def _stalled(self) -> None:
        self._timer = None
        self._close()
        abort_client(self._request)

    def _close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._body.close()

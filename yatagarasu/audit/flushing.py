"""The service every built-in sink runs: a flush on an interval, and a last flush at stop."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class FlushingService(Service):
    """
    :param clock: time.
    :param interval: seconds between flushes.
    :param flush: delivers what is queued (a Deferred returned is waited for before the next).
    :param stop: delivers the rest and closes; its Deferred is what stopping waits for.
    :param start: opens connections when the service starts (default: nothing).
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        flush: Callable[[], object],
        stop: Callable[[], Deferred[None]],
        start: Callable[[], None] = lambda: None,
    ) -> None:
        self._interval = interval
        self._loop = LoopingCall(flush)
        self._loop.clock = clock
        self._stop = stop
        self._start = start

    def startService(self) -> None:
        super().startService()
        self._start()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._stop()

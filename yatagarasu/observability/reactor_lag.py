"""
How long the reactor could not turn: a timer due every :data:`INTERVAL` seconds notes how late
it ran. Whatever holds the reactor thread shows: a full garbage collection over a large memory
cache (docs/PERFORMANCE.md, "Full garbage collections"), a long callback, a process starved of
CPU. A stall longer than the interval always holds up a timer (a shorter one of L seconds,
L / interval of the time) and shows as its length less up to one interval. Twenty timer
calls a second are nothing beside the requests.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: seconds between two timer calls
INTERVAL = 0.05


class ReactorLagProbe(Service):
    """
    :param clock: the reactor's clock.
    :param observe: called with each lateness in seconds (0.0 for a timer on time).
    :param interval: seconds between two timer calls.
    """

    def __init__(
        self, clock: IReactorTime, observe: Callable[[float], None], interval: float = INTERVAL
    ) -> None:
        self._clock = clock
        self._observe = observe
        self._interval = interval
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(self._clock.seconds())

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, now: float) -> None:
        self._due = now + self._interval
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        self._observe(now - self._due)  # the call runs once the clock has reached it: >= 0
        self._schedule(now)

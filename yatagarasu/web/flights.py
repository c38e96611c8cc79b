"""
Request coalescing: one upstream fetch that concurrent requests for the same thing (an
object, a slice of one) wait on instead of sending their own.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred


class Flight:
    """One upstream fetch that concurrent misses for the same key wait on."""

    def __init__(self) -> None:
        self._waiters: list[Deferred[object]] = []

    def wait(self) -> Deferred[object]:
        """:returns: fires with what the fetch settled with (see :meth:`settle`)."""
        waiter: Deferred[object] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def settle(self, result: object) -> None:
        """
        Release every follower (once; later calls do nothing).

        :param result: what the followers get; an exception is raised in each of them.
        """
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:  # the follower's own client went away
                continue
            if isinstance(result, BaseException):
                waiter.errback(result)
            else:
                waiter.callback(result)

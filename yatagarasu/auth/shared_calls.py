"""
One call per key at a time, shared by every caller that asks for the same key meanwhile (N
concurrent requests with the same authorization query → one policy service call).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


class _Call(Generic[T]):
    """One running call and the callers waiting for its result."""

    def __init__(self, forget: Callable[[_Call[T]], None]) -> None:
        self._forget = forget
        self._waiters: list[Deferred[T]] = []
        self._running: Deferred[T] | None = None

    def join(self) -> Deferred[T]:
        waiter: Deferred[T] = Deferred(self._leave)
        self._waiters.append(waiter)
        return waiter

    def start(self, running: Deferred[T]) -> None:
        self._running = running
        running.addBoth(self._deliver)

    def _deliver(self, result: T | Failure) -> None:
        self._forget(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _leave(self, waiter: Deferred[T]) -> None:
        """A caller cancelled (its client went away): the last one out cancels the call."""
        self._waiters = [w for w in self._waiters if w is not waiter]
        running = self._running
        if not self._waiters and running is not None and not running.called:
            self._forget(self)
            running.cancel()


class SharedCalls(Generic[T]):
    """
    Calls in flight, by key.

    A caller's cancellation only withdraws that caller; the call itself is cancelled when
    every caller has withdrawn. A failed call fails every caller.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def join(self, key: Hashable, start: Callable[[], Deferred[T]]) -> tuple[Deferred[T], bool]:
        """
        :param key: what the call is about.
        :param start: starts the call (only when none runs for ``key``).
        :returns: a Deferred of the call's result for this caller, and whether this caller
            started the call (``False``: it joined one in flight).
        """
        call = self._calls.get(key)
        if call is not None:
            return call.join(), False

        def forget(done: _Call[T]) -> None:
            if self._calls.get(key) is done:
                del self._calls[key]

        call = self._calls[key] = _Call(forget)
        waiter = call.join()
        call.start(start())
        return waiter, True

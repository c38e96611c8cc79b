"""Values that depend on the time only to the second (``Date`` headers, log time stamps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerSecond(Generic[T]):
    """
    ``make(second)`` called once per whole second, its result handed out until the second
    changes: formatting a time is costly next to everything else done for a request.

    :param make: builds the value for a whole second (epoch seconds).
    """

    def __init__(self, make: Callable[[int], T]) -> None:
        self._make = make
        self._second: int | None = None
        self._value: T | None = None

    def __call__(self, now: float) -> T:
        """:returns: the value for the second ``now`` falls in."""
        second = int(now)
        if second != self._second:
            self._second, self._value = second, self._make(second)
        return self._value  # type: ignore[return-value]  # set above: no cast call per request

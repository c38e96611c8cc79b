"""Reading Deferreds in tests: the result of one that has fired, and tests written as coroutines."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")
S = TypeVar("S")


def result_of(deferred: Deferred[T]) -> T:
    """
    The result of a Deferred that has already fired.

    :param deferred: the Deferred.
    :returns: its result.
    :raises BaseException: the exception it failed with.
    :raises AssertionError: when it has not fired yet.
    """
    results: list[Any] = []
    deferred.addBoth(results.append)
    if not results:
        raise AssertionError(f"{deferred!r} has not fired")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def deferred_test(
    test: Callable[[S], Coroutine[Deferred[Any], Any, None]],
) -> Callable[[S], Deferred[None]]:
    """
    Turn an ``async def`` test method into one that returns a Deferred, which both
    ``twisted.trial`` and pytest with pytest-twisted wait for on the running reactor (no
    import of either is needed).

    :param test: the coroutine method.
    :returns: the method returning ``Deferred.fromCoroutine(test(self))``.
    """

    def run(self: S) -> Deferred[None]:
        return Deferred.fromCoroutine(test(self))

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    return run

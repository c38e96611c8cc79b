"""Polling bounded in time and in number of tries, and the error that ends a start-up early."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class StartupError(RuntimeError):
    """A helper process (moto, redis-server, the proxy, twistd) did not come up as expected."""


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """
    Poll ``predicate`` until it returns true, bounded in time **and** in number of tries.

    :param predicate: called repeatedly; exceptions count as "not yet", except
        :class:`StartupError`, which ends the wait at once (e.g. "the process exited").
    :param timeout: give up after this many seconds.
    :param interval: pause between tries.
    :param what: description used in the error message.
    :raises TimeoutError: when the predicate never became true.
    """
    deadline = time.monotonic() + timeout
    max_tries = math.ceil(timeout / interval) + 1
    last_error: BaseException | None = None
    for _ in range(max_tries):
        try:
            if predicate():
                return
        except StartupError:
            raise
        except Exception as exc:  # the thing may simply not be up yet
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error is not None else ""
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")

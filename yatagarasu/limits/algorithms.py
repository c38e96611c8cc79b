"""
The two rate-limit algorithms, as pure functions of (limit, state, now): no clock, no table.

- ``token_bucket``, written as GCRA (the generic cell rate algorithm, the token bucket with one
  number of state): the state is the *theoretical arrival time* ``tat``. Each request moves it
  ``1 / rate`` later; a request is refused when that would put it more than ``burst / rate``
  ahead of now. Refused requests leave it where it was.
- ``sliding_window`` (the sliding window counter): fixed windows of ``burst / rate`` seconds;
  the state is (window number, count of the previous window, count of this one), and a request
  is allowed while ``previous * (1 - elapsed fraction) + current + 1 <= burst``.

:mod:`yatagarasu.limits.redis` runs the same arithmetic in Lua, inside Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from yatagarasu.values import RateLimit


class Outcome(NamedTuple):
    """
    One limit's answer for one request.

    :ivar allowed: whether the limit has room.
    :ivar state: the state to keep when the request is counted.
    :ivar remaining: requests left after this one (allowed) or now (refused).
    :ivar reset: seconds until the limit is whole again.
    :ivar retry_after: when refused, seconds until a request would be allowed (else 0).
    """

    allowed: bool
    state: Any
    remaining: int
    reset: float
    retry_after: float


#: makes an :class:`Outcome` without the Python-level ``__new__`` of named tuples (one per
#: limit per request)
_outcome = tuple.__new__


def token_bucket(limit: RateLimit, tat: float | None, now: float) -> Outcome:
    """
    :param limit: the limit.
    :param tat: the theoretical arrival time kept for the key (``None``: a new key).
    :param now: the time, seconds.
    :returns: the outcome; its ``state`` is the new theoretical arrival time.
    """
    interval = limit.interval
    tolerance = limit.tolerance
    base = now if tat is None or tat < now else tat
    after = base + interval
    if after - now <= tolerance + 1e-9:
        remaining = int((tolerance - (after - now)) * limit.rate + 1e-9)
        return _outcome(Outcome, (True, after, remaining, after - now, 0.0))
    remaining = int(max(0.0, tolerance - (base - now)) * limit.rate + 1e-9)
    return _outcome(Outcome, (False, base, remaining, base - now, after - now - tolerance))


def token_bucket_idle(limit: RateLimit, tat: float, now: float) -> bool:
    """:returns: whether the key's bucket is full again (keeping it changes nothing)."""
    return tat <= now


SlidingState = tuple[int, int, int]
"""(window number, requests counted in the previous window, in this one)"""


def sliding_window(limit: RateLimit, state: SlidingState | None, now: float) -> Outcome:
    """
    :param limit: the limit.
    :param state: the key's (window number, previous count, current count), or ``None``.
    :param now: the time, seconds.
    :returns: the outcome; its ``state`` is the new (window, previous, current).
    """
    window = limit.window
    position = now / window
    number = math.floor(position)
    previous = current = 0
    if state is not None:
        if state[0] == number:
            previous, current = state[1], state[2]
        elif state[0] == number - 1:
            previous = state[2]
    elapsed = position - number
    estimate = previous * (1.0 - elapsed) + current
    reset = (number + 1) * window - now
    burst = limit.burst
    if estimate + 1 <= burst + 1e-9:
        remaining = max(0, int(burst - estimate - 1 + 1e-9))
        return _outcome(Outcome, (True, (number, previous, current + 1), remaining, reset, 0.0))
    if current + 1 <= burst and previous > 0:
        # this window's count fits: wait until enough of the previous one has slid out
        needed = 1.0 - (burst - current - 1) / previous
        retry = (number + needed) * window - now
    else:
        # wait for the next window, where this one's count becomes the previous one
        needed = max(0.0, 1.0 - (burst - 1) / current) if current else 0.0
        retry = (number + 1 + needed) * window - now
    return _outcome(Outcome, (False, (number, previous, current), 0, reset, max(retry, 0.0)))


def sliding_window_idle(limit: RateLimit, state: SlidingState, now: float) -> bool:
    """:returns: whether the key's windows are both empty at ``now``."""
    return math.floor(now / limit.window) - state[0] >= 2


Step = Callable[[RateLimit, Any, float], Outcome]
Idle = Callable[[RateLimit, Any, float], bool]

#: each algorithm's step, by its configuration name
ALGORITHMS: dict[str, Step] = {"token_bucket": token_bucket, "sliding_window": sliding_window}
#: each algorithm's idle check: is a key's state worth nothing any more (equal to a new key's)?
IDLE: dict[str, Idle] = {"token_bucket": token_bucket_idle, "sliding_window": sliding_window_idle}

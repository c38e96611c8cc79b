"""The two algorithms as pure functions of (limit, state, now)."""

from __future__ import annotations

from typing import Any

import pytest

from yatagarasu.limits.algorithms import (
    ALGORITHMS,
    IDLE,
    sliding_window,
    token_bucket,
)
from yatagarasu.values import RateLimit


def run(limit: RateLimit, times: list[float]) -> list[bool]:
    """Requests at ``times``; each allowed one is kept, as a limiter does."""
    step = ALGORITHMS[limit.algorithm]
    state: Any = None
    allowed = []
    for now in times:
        outcome = step(limit, state, now)
        if outcome.allowed:
            state = outcome.state
        allowed.append(outcome.allowed)
    return allowed


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_a_burst_is_allowed_then_refused(algorithm: str) -> None:
    limit = RateLimit("per_ip", 2.0, 4, algorithm)
    assert run(limit, [100.0] * 6) == [True] * 4 + [False] * 2


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_the_sustained_rate_holds_over_time(algorithm: str) -> None:
    limit = RateLimit("global", 10.0, 10, algorithm)
    # 100 requests a second for 20 seconds: about rate * seconds (+ one burst) get through;
    # the sliding window counter errs on the safe side (about one request per window less)
    times = [1000.0 + i / 100 for i in range(2000)]
    allowed = sum(run(limit, times))
    assert 200 * 0.9 <= allowed <= 200 + 10 + 1


def test_token_bucket_counts_remaining_reset_and_retry_after() -> None:
    limit = RateLimit("per_ip", 1.0, 3)
    first = token_bucket(limit, None, 50.0)
    assert (first.allowed, first.remaining, first.reset) == (True, 2, 1.0)
    second = token_bucket(limit, first.state, 50.0)
    third = token_bucket(limit, second.state, 50.0)
    assert (third.allowed, third.remaining, third.reset) == (True, 0, 3.0)
    refused = token_bucket(limit, third.state, 50.0)
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert refused.retry_after == pytest.approx(1.0)
    assert refused.state == third.state  # a refusal does not move the state
    later = token_bucket(limit, third.state, 51.0)
    assert later.allowed


def test_token_bucket_refills_to_burst_and_no_more() -> None:
    limit = RateLimit("per_ip", 5.0, 2)
    state = token_bucket(limit, None, 0.0).state
    state = token_bucket(limit, state, 0.0).state
    # an hour idle refills the two tokens, not 18000
    assert run(limit, [3600.0, 3600.0, 3600.0]) == [True, True, False]
    assert IDLE["token_bucket"](limit, state, 3600.0)
    assert not IDLE["token_bucket"](limit, state, 0.1)


def test_sliding_window_weights_the_previous_window() -> None:
    limit = RateLimit("per_ip", 10.0, 10, "sliding_window")  # 10 per 1-second window
    state: Any = None
    for _ in range(10):
        state = sliding_window(limit, state, 7.0).state
    refused = sliding_window(limit, state, 7.5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5 + 0.1)  # next window, 10 % slid out
    assert refused.reset == pytest.approx(0.5)
    # at 8.5, half the previous window still counts: 5 of 10 are left
    allowed = sliding_window(limit, state, 8.5)
    assert allowed.allowed and allowed.remaining == 4
    assert IDLE["sliding_window"](limit, state, 9.0)
    assert not IDLE["sliding_window"](limit, state, 8.99)


def test_sliding_window_retry_after_allows_the_next_request() -> None:
    limit = RateLimit("per_ip", 4.0, 4, "sliding_window")
    state: Any = None
    now = 12.3
    for _ in range(4):
        state = sliding_window(limit, state, now).state
    refused = sliding_window(limit, state, now)
    assert not refused.allowed
    at = now + refused.retry_after
    assert sliding_window(limit, state, at + 1e-6).allowed
    assert not sliding_window(limit, state, at - 0.01).allowed

"""The circuit breaker of one upstream (yatagarasu.s3.breaker), on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from yatagarasu.config.schema import CircuitBreakerConfig
from yatagarasu.s3.breaker import CircuitBreaker, CircuitState, Permit


def breaker(
    clock: Clock, changes: list[CircuitState] | None = None, **settings: int | float
) -> CircuitBreaker:
    config = CircuitBreakerConfig(**settings)  # type: ignore[arg-type]
    seen = changes if changes is not None else []
    return CircuitBreaker(clock, config, lambda state, _: seen.append(state))


def admitted(b: CircuitBreaker) -> Permit:
    permit = b.admit()
    assert permit is not None
    return permit


def test_opens_after_failure_threshold_consecutive_failures() -> None:
    clock = Clock()
    changes: list[CircuitState] = []
    b = breaker(clock, changes, failure_threshold=3)
    for _ in range(2):
        admitted(b).failed("boom")
    admitted(b).succeeded()  # a success resets the count
    for _ in range(2):
        admitted(b).failed("boom")
    assert b.state is CircuitState.CLOSED
    admitted(b).failed("S3 answered 500")
    assert b.state is CircuitState.OPEN
    assert changes == [CircuitState.OPEN]
    assert b.admit() is None
    assert (b.consecutive_failures, b.last_error) == (3, "S3 answered 500")


def test_retry_after_counts_down_to_half_open() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, timeout_seconds=30)
    admitted(b).failed("down")
    assert b.retry_after() == 30
    clock.advance(10.5)
    assert b.retry_after() == 20
    clock.advance(19.5)
    assert b.state is CircuitState.HALF_OPEN
    assert b.retry_after() == 0


def test_half_open_admits_at_most_max_requests_at_once() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, timeout_seconds=5, half_open_max_requests=2)
    admitted(b).failed("down")
    clock.advance(5)
    first, second = admitted(b), admitted(b)
    assert b.admit() is None
    assert b.retry_after() == 1
    first.released()  # the client went away: the slot is free again
    third = admitted(b)
    assert b.admit() is None
    second.released()
    third.released()
    assert b.state is CircuitState.HALF_OPEN


def test_success_threshold_trial_successes_close_it() -> None:
    clock = Clock()
    changes: list[CircuitState] = []
    b = breaker(clock, changes, failure_threshold=1, timeout_seconds=5, success_threshold=2)
    admitted(b).failed("down")
    clock.advance(5)
    admitted(b).succeeded()
    assert b.state is CircuitState.HALF_OPEN
    admitted(b).succeeded()
    assert b.state is CircuitState.CLOSED
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert (b.consecutive_failures, b.last_error) == (0, None)


def test_a_failed_trial_opens_it_again_for_a_full_timeout() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, timeout_seconds=5)
    admitted(b).failed("down")
    clock.advance(5)
    admitted(b).failed("still down")
    assert b.state is CircuitState.OPEN
    assert b.retry_after() == 5


def test_outcomes_of_permits_from_before_a_transition_are_ignored() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=2, timeout_seconds=5, success_threshold=1)
    slow = admitted(b)  # issued while closed
    admitted(b).failed("down")
    admitted(b).failed("down")
    assert b.state is CircuitState.OPEN
    clock.advance(5)
    trial = admitted(b)
    slow.succeeded()  # says nothing about the trial
    assert b.state is CircuitState.HALF_OPEN
    trial.succeeded()
    assert b.state is CircuitState.CLOSED


def test_a_permit_reports_once() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=2)
    permit = admitted(b)
    permit.failed("down")
    permit.failed("down")
    assert (b.state, b.consecutive_failures) == (CircuitState.CLOSED, 1)

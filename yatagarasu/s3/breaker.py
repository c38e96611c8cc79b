"""
A circuit breaker for one upstream: closed → open after consecutive failures, half-open after
a timeout, closed again after enough trial successes.

Only real upstream outcomes feed it (connect errors, timeouts and 5xx are failures; any answer
below 500 is a success); a client that went away, S3's 4xx and the proxy's own errors leave it
as it is. Every decision (:meth:`CircuitBreaker.admit`) and every outcome is one synchronous
call on the reactor thread, so "check and take a half-open slot" cannot interleave.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum

from twisted.internet.interfaces import IReactorTime

from yatagarasu.config.schema import CircuitBreakerConfig


class CircuitState(Enum):
    """The breaker's state; ``value`` is what ``/ready`` shows."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: ``yatagarasu_circuit_state`` gauge values
STATE_NUMBERS = {CircuitState.CLOSED: 0, CircuitState.OPEN: 1, CircuitState.HALF_OPEN: 2}


class Permit:
    """
    One request's admission through a breaker: report its outcome exactly once.

    Outcomes of a permit issued before the breaker last changed state are ignored (a slow
    request that started while closed says nothing about the half-open trial).
    """

    __slots__ = ("_breaker", "_epoch", "_settled", "_trial")

    def __init__(self, breaker: CircuitBreaker, epoch: int, trial: bool) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._trial = trial
        self._settled = False

    def succeeded(self) -> None:
        """The upstream answered (any status below 500)."""
        if self._settle():
            self._breaker._succeeded(self._epoch, self._trial)

    def failed(self, reason: str) -> None:
        """
        The upstream failed (connect error, timeout, 5xx).

        :param reason: a short description without secrets (shown by ``/ready``).
        """
        if self._settle():
            self._breaker._failed(self._epoch, self._trial, reason)

    def released(self) -> None:
        """No verdict (the client went away): give a half-open trial slot back."""
        if self._settle():
            self._breaker._released(self._epoch, self._trial)

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True


class CircuitBreaker:
    """
    The breaker of one upstream.

    :param clock: time (when an open breaker turns half-open).
    :param config: thresholds and the open timeout.
    :param on_change: called with the new state and the last error after each transition
        (the log line).
    :ivar consecutive_failures: failures in a row since the last success.
    :ivar last_error: the last failure's description (``None`` until one happened).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: CircuitBreakerConfig,
        on_change: Callable[[CircuitState, str | None], None] | None = None,
    ) -> None:
        self._clock = clock
        self._config = config
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._epoch = 0
        self._opened_at = 0.0
        self._trials = 0
        self._trial_successes = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose timeout has passed is half-open)."""
        self._expire()
        return self._state

    def admit(self) -> Permit | None:
        """
        Decide whether a request may go to this upstream, and take a trial slot when the
        breaker is half-open (at most ``half_open_max_requests`` trials in flight at once).

        :returns: a permit to report the outcome on, or ``None`` when refused.
        """
        self._expire()
        if self._state is CircuitState.CLOSED:
            return Permit(self, self._epoch, trial=False)
        if (
            self._state is CircuitState.HALF_OPEN
            and self._trials < self._config.half_open_max_requests
        ):
            self._trials += 1
            return Permit(self, self._epoch, trial=True)
        return None

    def retry_after(self) -> int:
        """
        :returns: whole seconds until the breaker lets a request through again (0 when it
            does now; 1 while half-open with every trial slot taken).
        """
        state = self.state
        if state is CircuitState.OPEN:
            left = self._opened_at + self._config.timeout_seconds - self._clock.seconds()
            return max(1, math.ceil(left))
        if self.admits_now():
            return 0
        return 1

    def admits_now(self) -> bool:
        """:returns: whether :meth:`admit` would give a permit now (nothing is taken)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        return (
            state is CircuitState.HALF_OPEN and self._trials < self._config.half_open_max_requests
        )

    def _expire(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self._clock.seconds() >= self._opened_at + self._config.timeout_seconds
        ):
            self._move(CircuitState.HALF_OPEN)

    def _move(self, state: CircuitState) -> None:
        self._state = state
        self._epoch += 1
        self._trials = 0
        self._trial_successes = 0
        if state is CircuitState.OPEN:
            self._opened_at = self._clock.seconds()
        if self._on_change is not None:
            self._on_change(state, self.last_error)

    def _succeeded(self, epoch: int, trial: bool) -> None:
        self.consecutive_failures = 0
        if epoch != self._epoch or not trial:
            return
        self._trials -= 1
        self._trial_successes += 1
        if self._trial_successes >= self._config.success_threshold:
            self._move(CircuitState.CLOSED)
            self.last_error = None

    def _failed(self, epoch: int, trial: bool, reason: str) -> None:
        self.consecutive_failures += 1
        self.last_error = reason
        if epoch != self._epoch:
            return
        if trial or self.consecutive_failures >= self._config.failure_threshold:
            self._move(CircuitState.OPEN)

    def _released(self, epoch: int, trial: bool) -> None:
        if epoch == self._epoch and trial:
            self._trials -= 1

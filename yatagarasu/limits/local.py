"""
The local limiter: state in this process's memory, answered within the call.

Limits of fixed keys (``global``, ``bucket``: as many as the configuration has) are kept in a
plain dict; those of client keys (``per_ip``, ``per_user``) in one :class:`BoundedTable` each.
The reactor thread is the only caller, so check-and-consume over several limits is atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from yatagarasu.interfaces import IRateLimiter
from yatagarasu.limits.algorithms import ALGORITHMS, IDLE, Outcome, Step
from yatagarasu.limits.table import BoundedTable
from yatagarasu.values import RateDecision, RateLimit

#: scopes whose keys come from clients (bounded tables); the others come from the config
CLIENT_SCOPES = frozenset({"per_ip", "per_user"})


class _FixedTable:
    """The state of limits with configured keys (bounded by the configuration)."""

    def __init__(self) -> None:
        self._states: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: str) -> Any:
        return self._states.get(key)

    def touch(self, key: str) -> None:
        pass

    def put(self, key: str, state: Any, now: float) -> None:
        self._states[key] = state


@implementer(IRateLimiter)
class LocalLimiter:
    """
    Rate limits kept in memory.

    :param clock: the time source.
    :param max_keys: the most keys each client scope keeps (``per_ip``, ``per_user``).
    """

    def __init__(self, clock: IReactorTime, max_keys: int) -> None:
        self._clock = clock
        self.max_keys = max_keys
        #: per limit: where its state is kept, and its algorithm's step
        self._plans: dict[RateLimit, tuple[BoundedTable | _FixedTable, Step]] = {}

    def table(self, limit: RateLimit) -> BoundedTable | _FixedTable:
        """:returns: where ``limit``'s state is kept (made on first use)."""
        return self._plan(limit)[0]

    def _plan(self, limit: RateLimit) -> tuple[BoundedTable | _FixedTable, Step]:
        plan = self._plans.get(limit)
        if plan is None:
            table: BoundedTable | _FixedTable
            if limit.scope in CLIENT_SCOPES:
                idle = IDLE[limit.algorithm]
                table = BoundedTable(self.max_keys, lambda state, now: idle(limit, state, now))
            else:
                table = _FixedTable()
            plan = self._plans[limit] = (table, ALGORITHMS[limit.algorithm])
        return plan

    @property
    def evictions(self) -> int:
        """:returns: client keys forgotten because a table was full."""
        return sum(t.evictions for t, _ in self._plans.values() if isinstance(t, BoundedTable))

    def stats(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for limit, (table, _) in self._plans.items():
            if isinstance(table, BoundedTable):
                keys, evictions = found.get(limit.scope, (0, 0))
                found[limit.scope] = (keys + len(table), evictions + table.evictions)
        return found

    def acquire(self, checks: Sequence[tuple[RateLimit, str]]) -> RateDecision:
        now = self._clock.seconds()
        plans = self._plans
        results = []
        allowed = True
        for limit, key in checks:
            plan = plans.get(limit) or self._plan(limit)
            table = plan[0]
            outcome = plan[1](limit, table.get(key), now)
            if not outcome[0]:
                allowed = False
            results.append((limit, key, table, outcome))
        if not allowed:
            for _, key, table, _ in results:
                table.touch(key)
            return refusal([(limit, outcome) for limit, _, _, outcome in results])
        least: tuple[RateLimit, Outcome] | None = None
        room = 2.0
        for limit, key, table, outcome in results:
            table.put(key, outcome[1], now)
            share = outcome[2] / limit.burst
            if share < room:
                room, least = share, (limit, outcome)
        assert least is not None
        limit, outcome = least
        return RateDecision(True, limit.scope, limit.burst, outcome[2], outcome[3])

    def close(self) -> Deferred[None]:
        return succeed(None)


def refusal(outcomes: Sequence[tuple[RateLimit, Outcome]]) -> RateDecision:
    """
    The refusal of a request that some limit had no room for: reported by the limit that
    makes the client wait longest.

    :param outcomes: every limit's outcome, at least one of them refused.
    :returns: the decision.
    """
    _, index = max((o.retry_after, i) for i, (_, o) in enumerate(outcomes) if not o.allowed)
    limit, outcome = outcomes[index]
    return RateDecision(
        False, limit.scope, limit.burst, outcome.remaining, outcome.reset, outcome.retry_after
    )

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
from yatagarasu.limits.algorithms import ALGORITHMS, IDLE, Outcome
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
        self._tables: dict[RateLimit, BoundedTable | _FixedTable] = {}

    def table(self, limit: RateLimit) -> BoundedTable | _FixedTable:
        """:returns: where ``limit``'s state is kept (made on first use)."""
        table = self._tables.get(limit)
        if table is None:
            if limit.scope in CLIENT_SCOPES:
                idle = IDLE[limit.algorithm]
                table = BoundedTable(self.max_keys, lambda state, now: idle(limit, state, now))
            else:
                table = _FixedTable()
            self._tables[limit] = table
        return table

    @property
    def evictions(self) -> int:
        """:returns: client keys forgotten because a table was full."""
        return sum(t.evictions for t in self._tables.values() if isinstance(t, BoundedTable))

    def acquire(self, checks: Sequence[tuple[RateLimit, str]]) -> RateDecision:
        now = self._clock.seconds()
        outcomes: list[tuple[RateLimit, Outcome]] = []
        tables = []
        allowed = True
        for limit, key in checks:
            table = self.table(limit)
            outcome = ALGORITHMS[limit.algorithm](limit, table.get(key), now)
            allowed = allowed and outcome.allowed
            outcomes.append((limit, outcome))
            tables.append(table)
        for (_, key), table, (_, outcome) in zip(checks, tables, outcomes, strict=True):
            if allowed:
                table.put(key, outcome.state, now)
            else:
                table.touch(key)
        return decide(outcomes)

    def close(self) -> Deferred[None]:
        return succeed(None)


def decide(outcomes: Sequence[tuple[RateLimit, Outcome]]) -> RateDecision:
    """
    One decision from every limit's outcome: refused by the limit that makes the client wait
    longest, else reported by the one with the least room left.

    :param outcomes: at least one (limit, outcome).
    :returns: the decision.
    """
    refused = [(o.retry_after, i) for i, (_, o) in enumerate(outcomes) if not o.allowed]
    if refused:
        _, index = max(refused)
        limit, outcome = outcomes[index]
        return RateDecision(
            False, limit.scope, limit.burst, outcome.remaining, outcome.reset, outcome.retry_after
        )
    limit, outcome = min(outcomes, key=lambda lo: lo[1].remaining / lo[0].burst)
    return RateDecision(True, limit.scope, limit.burst, outcome.remaining, outcome.reset)

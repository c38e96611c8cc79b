"""
The local limiter: state in this process's memory, answered within the call.

Limits of fixed keys (``global``, ``bucket``: as many as the configuration has) are kept in a
plain dict; those of client keys (``per_ip``, ``per_user``) in one :class:`BoundedTable` each.
The reactor thread is the only caller, so check-and-consume over several limits is atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
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


_Plan = tuple[dict[str, Any], Step, BoundedTable | None]
"""Per limit: its states by key (read directly), its algorithm's step, and its bounded table
(``None``: configured keys, written directly too)."""


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
        self._plans: dict[RateLimit, _Plan] = {}

    def keys(self, limit: RateLimit) -> int:
        """:returns: how many keys ``limit`` keeps state for."""
        return len(self._plan(limit)[0])

    def _plan(self, limit: RateLimit) -> _Plan:
        plan = self._plans.get(limit)
        if plan is None:
            if limit.scope in CLIENT_SCOPES:
                table = BoundedTable(self.max_keys, partial(IDLE[limit.algorithm], limit))
                plan = (table.states, ALGORITHMS[limit.algorithm], table)
            else:
                plan = ({}, ALGORITHMS[limit.algorithm], None)
            self._plans[limit] = plan
        return plan

    @property
    def evictions(self) -> int:
        """:returns: client keys forgotten because a table was full."""
        return sum(t.evictions for _, _, t in self._plans.values() if t is not None)

    def stats(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for limit, (_, _, table) in self._plans.items():
            if table is not None:
                keys, evictions = found.get(limit.scope, (0, 0))
                found[limit.scope] = (keys + len(table), evictions + table.evictions)
        return found

    def acquire(self, checks: Sequence[tuple[RateLimit, str]]) -> RateDecision:
        now = self._clock.seconds()
        plans = self._plans
        results = []
        allowed = True
        for limit, key in checks:
            states, step, table = plans.get(limit) or self._plan(limit)
            outcome = step(limit, states.get(key), now)
            if not outcome[0]:
                allowed = False
            results.append((limit, key, states, table, outcome))
        if not allowed:
            for _, key, _, table, _ in results:
                if table is not None:
                    table.touch(key)
            return refusal([(limit, outcome) for limit, _, _, _, outcome in results])
        least: tuple[RateLimit, Outcome] | None = None
        room = 2.0
        for limit, key, states, table, outcome in results:
            if table is None:
                states[key] = outcome[1]
            else:
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

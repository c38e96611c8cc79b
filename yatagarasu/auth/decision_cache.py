"""
Authorization decisions remembered for a while: a bounded LRU map with a time to live, on the
injected clock (``opa_cache_ttl_seconds``, ``openfga_cache_ttl_seconds``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime

#: decisions kept per authorizer; the least recently used one goes first beyond this
DEFAULT_MAX_ENTRIES = 10_000


class DecisionCache:
    """
    Allow/deny answers by query key, each kept ``ttl_seconds`` after it was stored.

    Bounded: beyond ``max_entries`` the least recently used entry is dropped, one at a time
    (the table is never cleared at once). Only answers are stored: a failed call never is.

    :param clock: time source.
    :param ttl_seconds: how long a decision is reused; ``0`` stores nothing.
    :param max_entries: the bound.
    """

    def __init__(
        self, clock: IReactorTime, ttl_seconds: float, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._clock = clock
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> bool | None:
        """
        :param key: the query key.
        :returns: the remembered decision, or ``None`` (never stored, or expired: dropped).
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, allowed = entry
        if self._clock.seconds() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return allowed

    def put(self, key: Hashable, allowed: bool) -> None:
        """
        :param key: the query key.
        :param allowed: the policy service's answer.
        """
        if self._ttl <= 0:
            return
        entries = self._entries
        entries[key] = (self._clock.seconds() + self._ttl, allowed)
        entries.move_to_end(key)
        while len(entries) > self._max:
            entries.popitem(last=False)

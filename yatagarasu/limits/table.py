"""
A bounded table of per-key limiter state: least recently used first, idle keys dropped.

The bound is a number of keys. Past it, the least recently seen key is forgotten — one per
new key, never the whole table (clearing a full table at once would hand every client a
fresh limit at the same moment). Keys whose state has become equivalent to a new key's
(their limit is whole again) are dropped as they reach the old end, a few per write, so an
idle table shrinks without a sweep over it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: idle keys looked at (at the old end) per write
IDLE_CHECKS_PER_WRITE = 2


class BoundedTable:
    """
    Per-key state, at most ``max_keys`` keys.

    :param max_keys: the bound (>= 1).
    :param idle: ``idle(state, now)``: whether a state equals a new key's at ``now``.
    :ivar evictions: keys forgotten because the table was full.
    """

    def __init__(self, max_keys: int, idle: Callable[[Any, float], bool]) -> None:
        self.max_keys = max_keys
        self._idle = idle
        #: the states by key, oldest first (read it directly; write through :meth:`put`)
        self.states: OrderedDict[str, Any] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.states)

    def get(self, key: str) -> Any:
        """:returns: the key's state, or ``None`` for a key not kept."""
        return self.states.get(key)

    def touch(self, key: str) -> None:
        """Mark a key as just seen without changing its state (a refused request)."""
        if key in self.states:
            self.states.move_to_end(key)

    def put(self, key: str, state: Any, now: float) -> None:
        """
        Keep ``state`` for ``key`` as the most recently seen; then drop a few idle keys from
        the old end, and the oldest key if the table is over its bound.

        :param key: the key.
        :param state: its new state.
        :param now: the time, seconds (for the idle check).
        """
        states = self.states
        states[key] = state
        states.move_to_end(key)
        idle = self._idle
        for _ in range(IDLE_CHECKS_PER_WRITE):
            oldest = next(iter(states))
            if oldest == key or not idle(states[oldest], now):
                break
            del states[oldest]
        if len(states) > self.max_keys:
            states.popitem(last=False)
            self.evictions += 1

"""Cache counters, per layer and per bucket."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerStats:
    """
    A snapshot of a cache's counters (the shape of the admin API's stats documents).

    ``max_size_bytes`` is the configured bound (0 when the layer has none it can report).
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    current_size_bytes: int = 0
    current_item_count: int = 0
    max_size_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``, 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_json(self) -> dict[str, float | int]:
        """:returns: the admin API document for these counters."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "evictions": self.evictions,
            "current_size_bytes": self.current_size_bytes,
            "current_item_count": self.current_item_count,
            "max_size_bytes": self.max_size_bytes,
        }

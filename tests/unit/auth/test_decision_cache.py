"""The decision cache: TTL on the injected clock, LRU bound, nothing stored with TTL 0."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from yatagarasu.auth.decision_cache import DecisionCache


def test_a_decision_lives_for_its_ttl() -> None:
    clock = Clock()
    cache = DecisionCache(clock, 10)
    assert cache.get("k") is None
    cache.put("k", False)
    clock.advance(9.9)
    assert cache.get("k") is False
    clock.advance(0.1)
    assert cache.get("k") is None
    assert len(cache) == 0  # the expired entry was dropped


def test_ttl_zero_stores_nothing() -> None:
    cache = DecisionCache(Clock(), 0)
    cache.put("k", True)
    assert (cache.get("k"), len(cache)) == (None, 0)


def test_the_least_recently_used_entry_goes_first_one_at_a_time() -> None:
    cache = DecisionCache(Clock(), 60, max_entries=3)
    for key in "abc":
        cache.put(key, True)
    assert cache.get("a") is True  # "a" is now the most recently used
    cache.put("d", False)
    assert len(cache) == 3
    assert [cache.get(k) for k in "abcd"] == [True, None, True, False]


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        DecisionCache(Clock(), 1, max_entries=0)

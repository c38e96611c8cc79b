"""The bounded per-key table: LRU past the bound, idle keys dropped, never cleared at once."""

from __future__ import annotations

from yatagarasu.limits.table import BoundedTable


def never_idle(state: object, now: float) -> bool:
    return False


def test_past_the_bound_only_the_least_recently_seen_key_goes() -> None:
    table = BoundedTable(3, never_idle)
    for key in "abc":
        table.put(key, key.upper(), 0.0)
    table.touch("a")  # seen again (a refused request): now the most recent
    table.put("d", "D", 0.0)
    assert len(table) == 3
    assert table.get("b") is None
    assert [table.get(k) for k in "acd"] == ["A", "C", "D"]
    assert table.evictions == 1


def test_a_flood_of_new_keys_never_empties_the_table() -> None:
    table = BoundedTable(1000, never_idle)
    for i in range(100_000):
        table.put(f"10.0.{i // 256}.{i % 256}", float(i), 0.0)
        assert len(table) == min(i + 1, 1000)
    assert table.evictions == 99_000
    assert table.get("10.0.1.0") is None  # an old one
    assert table.get(f"10.0.{99_999 // 256}.{99_999 % 256}") == 99_999.0


def test_idle_keys_at_the_old_end_are_dropped_a_few_per_write() -> None:
    table = BoundedTable(100, lambda state, now: state < now)
    for i in range(10):
        table.put(f"k{i}", 5.0, 0.0)
    table.put("new", 50.0, 10.0)  # the ten old ones are idle at 10.0: two go per write
    assert len(table) == 9
    table.put("new2", 50.0, 10.0)
    assert len(table) == 8
    assert table.evictions == 0
    assert table.get("new") == 50.0

"""
Values made once a second (yatagarasu.per_second): the Date header and the log time follow the
injected clock.
"""

from __future__ import annotations

from tests.unit.fakes import Harness, bucket_entry, parse_response
from yatagarasu.per_second import PerSecond


def test_the_date_follows_the_injected_clock_second_by_second() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    h.clock.advance(1_800_000_000)
    _, first = h.get("/health")
    h.clock.advance(0.5)
    _, same_second = h.get("/health")
    h.clock.advance(1)
    _, next_second = h.get("/health")
    dates = [parse_response(t.value()).header("date") for t in (first, same_second, next_second)]
    assert dates == [
        "Fri, 15 Jan 2027 08:00:00 GMT",
        "Fri, 15 Jan 2027 08:00:00 GMT",
        "Fri, 15 Jan 2027 08:00:01 GMT",
    ]


def test_per_second_values_are_made_once_a_second() -> None:
    made: list[int] = []
    value = PerSecond(lambda second: made.append(second) or f"t{second}")
    assert [value(10.0), value(10.9), value(11.2), value(11.0)] == ["t10", "t10", "t11", "t11"]
    assert made == [10, 11]

"""
Range requests (yatagarasu.http.ranges): the Range grammar and ranges answered from the cache.
"""

from __future__ import annotations

import pytest

from tests.unit.cache_harness import OBJECT, cached, fetch, obj
from tests.unit.fakes import FakeResponse
from yatagarasu.http.ranges import MAX_POSITION, ByteRange, RangeSpec, Unsatisfiable, parse_range


def test_ranges_from_cache() -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj())
    partial = fetch(h, "/pub/a.txt", "Range: bytes=6-")
    assert (partial.status, partial.body) == (206, b"world")
    assert partial.header("content-range") == "bytes 6-10/11"
    suffix = fetch(h, "/pub/a.txt", "Range: bytes=-3")
    assert suffix.body == b"rld"
    unsatisfiable = fetch(h, "/pub/a.txt", "Range: bytes=50-60")
    assert unsatisfiable.status == 416
    assert unsatisfiable.header("content-range") == "bytes */11"
    stale_validator = fetch(h, "/pub/a.txt", "Range: bytes=0-4", 'If-Range: "old"')
    assert (stale_validator.status, stale_validator.body) == (200, b"hello world")
    matching = fetch(h, "/pub/a.txt", "Range: bytes=0-4", 'If-Range: "v1"')
    assert (matching.status, matching.body) == (206, b"hello")
    assert len(h.agents["pub"].sent) == 1


def test_range_on_miss_goes_to_s3_and_stores_nothing() -> None:
    h = cached(slice_size_mb=0)  # slicing off: the client's range as it is
    response = fetch(
        h,
        "/pub/a.txt",
        "Range: bytes=0-4",
        answer=FakeResponse(206, {**OBJECT, "Content-Range": "bytes 0-4/11"}, body=b"hello"),
    )
    assert (response.status, response.header("x-cache")) == (206, "BYPASS")
    assert h.agents["pub"].sent[0].headers.getRawHeaders(b"range") == [b"bytes=0-4"]
    fetch(h, "/pub/a.txt", answer=obj())  # still a miss


def test_range_on_miss_of_a_small_object_is_answered_from_the_first_slice() -> None:
    h = cached(slice_size_mb=0.5)
    response = fetch(
        h,
        "/pub/a.txt",
        "Range: bytes=6-9",
        answer=FakeResponse(206, {**OBJECT, "Content-Range": "bytes 0-10/11"}, body=b"hello world"),
    )
    assert (response.status, response.header("x-cache")) == (206, "BYPASS")
    assert (response.body, response.header("content-range")) == (b"worl", "bytes 6-9/11")
    assert h.agents["pub"].sent[0].headers.getRawHeaders(b"range") == [b"bytes=0-524287"]
    fetch(h, "/pub/a.txt", answer=obj())  # still a miss


# Range value, length, expected: a ByteRange, None (serve the whole), or Unsatisfiable.
RESOLVE_TABLE: list[tuple[bytes, int, ByteRange | type[Unsatisfiable] | None]] = [
    (b"bytes=0-9", 100, ByteRange(0, 9, 100)),
    (b"bytes=99-", 100, ByteRange(99, 99, 100)),
    (b"bytes=100-", 100, Unsatisfiable),
    (b"bytes=110-", 100, Unsatisfiable),  # issue 8 item 3: was None (200 from the cache)
    (b"bytes=110-120", 100, Unsatisfiable),
    (b"bytes=-0", 100, Unsatisfiable),
    (b"bytes=-200", 100, ByteRange(0, 99, 100)),
    (b"bytes=0-", 0, Unsatisfiable),
    (b"bytes=-5", 0, None),
    (b"bytes=0-" + b"9" * 40, 100, ByteRange(0, 99, 100)),
    (b"bytes=" + b"9" * 5000 + b"-", 100, Unsatisfiable),
]


@pytest.mark.parametrize(("value", "total", "expected"), RESOLVE_TABLE)
def test_resolve_table(
    value: bytes, total: int, expected: ByteRange | type[Unsatisfiable] | None
) -> None:
    spec = parse_range([value])
    assert spec is not None
    if expected is Unsatisfiable:
        with pytest.raises(Unsatisfiable):
            spec.resolve(total)
    else:
        assert spec.resolve(total) == expected


@pytest.mark.parametrize(
    "value",
    [b"bytes = 0-9", b"bytes=0 - 9", b"bytes=0-1,5-6", b"items=0-9", b"bytes=9-5", b"bytes=",
     b"bytes=-", b"garbage", b"bytes=0x1-2", b"bytes=\xff-1", b"bytes=1-2\x00"],
)  # fmt: skip
def test_values_outside_the_grammar_are_ignored(value: bytes) -> None:
    assert parse_range([value]) is None


def test_two_range_lines_are_ignored_and_numbers_are_clamped() -> None:
    assert parse_range([b"bytes=0-1", b"bytes=2-3"]) is None
    spec = parse_range([b"bytes=-" + b"9" * 100])
    assert spec == RangeSpec(None, MAX_POSITION)
    assert spec.value == b"bytes=-%d" % MAX_POSITION

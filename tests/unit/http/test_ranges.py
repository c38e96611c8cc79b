"""
Range requests (yatagarasu.http.ranges): the Range grammar and ranges answered from the cache.
"""

from __future__ import annotations

from tests.unit.cache_harness import OBJECT, cached, fetch, obj
from tests.unit.fakes import FakeResponse


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
    h = cached()
    response = fetch(
        h,
        "/pub/a.txt",
        "Range: bytes=0-4",
        answer=FakeResponse(206, {**OBJECT, "Content-Range": "bytes 0-4/11"}, body=b"hello"),
    )
    assert (response.status, response.header("x-cache")) == (206, "BYPASS")
    assert h.agents["pub"].sent[0].headers.getRawHeaders(b"range") == [b"bytes=0-4"]
    fetch(h, "/pub/a.txt", answer=obj())  # still a miss

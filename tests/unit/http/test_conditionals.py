"""
Conditional requests (yatagarasu.http.conditionals): entity-tag lists, If-Range, and the answers
from the cache.
"""

from __future__ import annotations

import pytest

from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import parse_response


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (('If-None-Match: "v1"',), 304),
        (('If-None-Match: W/"v1"',), 304),
        (('If-None-Match: "x", "v1"',), 304),
        (("If-None-Match: *",), 304),
        (('If-None-Match: "other"',), 200),
        (("If-Modified-Since: Wed, 21 Oct 2026 07:28:00 GMT",), 304),
        (("If-Modified-Since: Tue, 20 Oct 2026 07:28:00 GMT",), 200),
        (('If-None-Match: "other"', "If-Modified-Since: Thu, 22 Oct 2026 07:28:00 GMT"), 200),
        (('If-Match: "nope"',), 412),
        (('If-Match: "v1"',), 200),
        (("If-Unmodified-Since: Tue, 20 Oct 2026 07:28:00 GMT",), 412),
    ],
)
def test_conditionals_from_cache(headers: tuple[str, ...], status: int) -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj())
    response = fetch(h, "/pub/a.txt", *headers)
    assert response.status == status
    assert response.header("x-cache") == ("HIT" if status != 412 else None) or status == 412
    if status == 304:
        assert response.body == b""
        assert response.header("etag") == '"v1"'
    assert len(h.agents["pub"].sent) == 1


def test_client_conditional_on_miss_answered_from_response() -> None:
    h = cached()
    response = fetch(h, "/pub/a.txt", 'If-None-Match: "v1"', answer=obj())
    assert (response.status, response.body) == (304, b"")
    assert fetch(h, "/pub/a.txt").header("x-cache") == "HIT"  # the body was still cached


def test_leaders_own_precondition_failure_is_not_shared() -> None:
    h = cached()
    _, leader = h.get("/pub/a.txt", 'If-Match: "other"')
    _, follower = h.get("/pub/a.txt")
    h.agents["pub"].answer(obj())
    assert parse_response(leader.value()).status == 412
    follower_response = parse_response(follower.value())
    assert (follower_response.status, follower_response.body) == (200, b"hello world")
    assert fetch(h, "/pub/a.txt").header("x-cache") == "HIT"
    assert len(h.agents["pub"].sent) == 1

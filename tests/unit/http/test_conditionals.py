"""
Conditional requests (yatagarasu.http.conditionals): entity-tag lists, If-Range, and the answers
from the cache.
"""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import parse_response
from yatagarasu.http.conditionals import (
    NO_CONDITIONS,
    is_conditional,
    parse_conditions,
    parse_entity_tags,
)


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


@pytest.mark.parametrize(
    ("values", "tags"),
    [
        ([b'"a"'], (b'"a"',)),
        ([b'"a", W/"b"', b'"c"'], (b'"a"', b'W/"b"', b'"c"')),
        ([b' , "a" ,, '], (b'"a"',)),
        ([b'"a,b"'], (b'"a,b"',)),  # a comma is an etagc
        ([b"*"], ()),
    ],
)
def test_entity_tag_lists(values: list[bytes], tags: tuple[bytes, ...]) -> None:
    parsed = parse_entity_tags(values)
    assert parsed is not None and parsed.tags == tags


@pytest.mark.parametrize(
    "value", [b"abc", b'"a" "b"', b'"a', b'*, "a"', b"W/a", b'"a\x00"', b"", b" , "]
)
def test_invalid_entity_tag_lists(value: bytes) -> None:
    assert parse_entity_tags([value]) is None


@pytest.mark.parametrize("if_range", [b'W/"a"', b"not a validator", b'"a"'])
def test_if_range_that_cannot_match_drops_the_range(if_range: bytes) -> None:
    lines = [if_range] if if_range != b'"a"' else [b'"a"', b'"a"']  # twice: invalid too
    conditions = parse_conditions(Headers({b"range": [b"bytes=0-1"], b"if-range": lines}))
    assert conditions.range is None
    assert not conditions.upstream_headers().hasHeader(b"range")


def test_no_conditional_field_is_the_shared_empty_value() -> None:
    assert parse_conditions(Headers({b"if-range": [b'"a"'], b"accept": [b"*/*"]})) is NO_CONDITIONS


def test_is_conditional_sees_preconditions_and_ranges_only() -> None:
    for name in ("If-None-Match", "if-modified-since", "If-Match", "If-Unmodified-Since", "Range"):
        assert is_conditional(Headers({name: ["x"]})), name
    assert not is_conditional(Headers({"Host": ["p"], "Accept": ["*/*"]}))
    assert not is_conditional(Headers({"If-Range": ['"v1"']}))  # meaningless without Range

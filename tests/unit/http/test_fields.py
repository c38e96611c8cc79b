"""yatagarasu.http: the range grammar, entity-tag lists and what is sent to S3."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from twisted.web.http_headers import Headers

import yatagarasu.http
from yatagarasu.http.conditionals import NO_CONDITIONS, parse_conditions, parse_entity_tags
from yatagarasu.http.dates import format_http_date, http_date
from yatagarasu.http.ranges import MAX_POSITION, ByteRange, RangeSpec, Unsatisfiable, parse_range

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


def test_only_well_formed_fields_go_upstream_in_canonical_form() -> None:
    headers = Headers(
        {
            b"if-modified-since": [b"not a date"],
            b"if-unmodified-since": [b"Sunday, 06-Nov-94 08:49:37 GMT"],
            b"if-none-match": [b'"a" ,"b"'],
            b"if-match": [b"bogus"],
            b"range": [b"BYTES=5-"],
            b"if-range": [b'"a"'],
        }
    )
    conditions = parse_conditions(headers)
    sent = dict(conditions.upstream_headers().getAllRawHeaders())
    assert sent == {
        b"If-Unmodified-Since": [b"Sun, 06 Nov 1994 08:49:37 GMT"],
        b"If-None-Match": [b'"a", "b"'],
        b"Range": [b"bytes=5-"],
    }
    assert conditions.if_range == b'"a"'
    assert conditions.range_for(10, b'"a"', None) == ByteRange(5, 9, 10)
    assert conditions.range_for(10, b'"z"', None) is None


@pytest.mark.parametrize("if_range", [b'W/"a"', b"not a validator", b'"a"'])
def test_if_range_that_cannot_match_drops_the_range(if_range: bytes) -> None:
    lines = [if_range] if if_range != b'"a"' else [b'"a"', b'"a"']  # twice: invalid too
    conditions = parse_conditions(Headers({b"range": [b"bytes=0-1"], b"if-range": lines}))
    assert conditions.range is None
    assert not conditions.upstream_headers().hasHeader(b"range")


def test_no_conditional_field_is_the_shared_empty_value() -> None:
    assert parse_conditions(Headers({b"if-range": [b'"a"'], b"accept": [b"*/*"]})) is NO_CONDITIONS


def test_duplicate_date_fields_are_invalid_and_dates_round_trip() -> None:
    twice = Headers({b"if-modified-since": [b"Sun, 06 Nov 1994 08:49:37 GMT"] * 2})
    assert parse_conditions(twice).if_modified_since is None
    when = http_date(b"Sun Nov  6 08:49:37 1994")
    assert when is not None and format_http_date(when) == b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_http_package_imports_nothing_above_it() -> None:
    """yatagarasu.http sits below web/, cache/, s3/ and auth/ (issue 9)."""
    package = Path(yatagarasu.http.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.startswith("yatagarasu")}
    assert ours and all(name.startswith("yatagarasu.http.") for name in ours)

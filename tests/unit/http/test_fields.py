"""What is sent to S3: only well-formed Range and conditional fields, in canonical form."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from yatagarasu.http.conditionals import parse_conditions
from yatagarasu.http.ranges import ByteRange


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

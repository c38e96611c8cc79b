"""HTTP dates (yatagarasu.http.dates): parsing, duplicates, formatting."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from yatagarasu.http.conditionals import parse_conditions
from yatagarasu.http.dates import format_http_date, http_date


def test_duplicate_date_fields_are_invalid_and_dates_round_trip() -> None:
    twice = Headers({b"if-modified-since": [b"Sun, 06 Nov 1994 08:49:37 GMT"] * 2})
    assert parse_conditions(twice).if_modified_since is None
    when = http_date(b"Sun Nov  6 08:49:37 1994")
    assert when is not None and format_http_date(when) == b"Sun, 06 Nov 1994 08:49:37 GMT"

"""
RFC 9110 conditional requests and single byte ranges, evaluated by the proxy itself against a
cached representation (S3 evaluates them on a miss).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.web.http_headers import Headers

from yatagarasu.http_dates import http_date

_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_CONDITIONAL = frozenset(
    {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"range"}
)


def is_conditional(headers: Headers) -> bool:
    """
    :param headers: the request headers.
    :returns: whether the request carries a precondition or a ``Range`` (``If-Range`` alone
        means nothing): when not, the whole representation is answered without evaluating any.
    """
    # A loop, not any() over a generator: this runs for every cache hit.
    for name, _ in headers.getAllRawHeaders():  # noqa: SIM110
        if name.lower() in _CONDITIONAL:
            return True
    return False


def first_header(headers: Headers, name: bytes) -> bytes | None:
    """:returns: the first value of header ``name``, or ``None``."""
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def _etags(value: bytes) -> list[bytes]:
    return [tag.strip() for tag in value.split(b",") if tag.strip()]


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def weak_match(tags: bytes, etag: bytes | None) -> bool:
    """
    :param tags: an ``If-None-Match`` value (``*`` or a list of entity tags).
    :param etag: the representation's ``ETag``.
    :returns: whether any tag matches with the weak comparison.
    """
    if tags.strip() == b"*":
        return etag is not None
    if etag is None:
        return False
    return any(_opaque(tag) == _opaque(etag) for tag in _etags(tags))


def strong_match(tags: bytes, etag: bytes | None) -> bool:
    """
    :param tags: an ``If-Match`` / ``If-Range`` value.
    :param etag: the representation's ``ETag``.
    :returns: whether any tag matches with the strong comparison (weak tags never do).
    """
    if tags.strip() == b"*":
        return etag is not None
    if etag is None or etag.startswith(b"W/"):
        return False
    return any(tag == etag for tag in _etags(tags))


def precondition_status(
    headers: Headers, etag: bytes | None, last_modified: bytes | None, *, safe: bool = True
) -> int | None:
    """
    Evaluate ``If-Match``, ``If-Unmodified-Since``, ``If-None-Match`` and
    ``If-Modified-Since`` in RFC 9110 §13.2.2 order.

    :param headers: the request headers.
    :param etag: the representation's ``ETag``.
    :param last_modified: its ``Last-Modified`` (parsed only when a date condition needs it).
    :param safe: GET/HEAD (a failed ``If-None-Match`` gives 304 rather than 412).
    :returns: ``412``, ``304``, or ``None`` to go on.
    """
    if_match = headers.getRawHeaders(b"if-match")
    if if_match:
        if not strong_match(b",".join(if_match), etag):
            return 412
    else:
        since = http_date(first_header(headers, b"if-unmodified-since"))
        if since is not None:
            modified = http_date(last_modified)
            if modified is None or modified > since:
                return 412
    if_none_match = headers.getRawHeaders(b"if-none-match")
    if if_none_match:
        if weak_match(b",".join(if_none_match), etag):
            return 304 if safe else 412
        return None
    since = http_date(first_header(headers, b"if-modified-since"))
    if since is not None:
        modified = http_date(last_modified)
        if modified is not None and modified <= since:
            return 304
    return None


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable single range: bytes ``first``..``last`` (inclusive) of ``total``."""

    first: int
    last: int
    total: int

    @property
    def length(self) -> int:
        """Bytes in the range."""
        return self.last - self.first + 1

    @property
    def content_range(self) -> bytes:
        """The ``Content-Range`` value."""
        return b"bytes %d-%d/%d" % (self.first, self.last, self.total)


class Unsatisfiable(Exception):
    """The range does not overlap the representation: answer 416."""


def requested_range(
    headers: Headers, total: int, etag: bytes | None, last_modified: bytes | None
) -> ByteRange | None:
    """
    The single byte range to serve, honouring ``If-Range``.

    Multiple ranges and malformed values are ignored (the whole representation is served),
    as RFC 9110 allows.

    :param headers: the request headers.
    :param total: the representation's length.
    :param etag: its ``ETag``.
    :param last_modified: its ``Last-Modified``.
    :returns: the range, or ``None`` to serve everything.
    :raises Unsatisfiable: when the range cannot be satisfied (416).
    """
    values = headers.getRawHeaders(b"range")
    if not values or len(values) != 1:
        return None
    if_range = headers.getRawHeaders(b"if-range")
    if if_range:
        validator = if_range[0].strip()
        if validator.startswith((b'"', b"W/")):
            if not strong_match(validator, etag):
                return None
        else:
            when, modified = http_date(validator), http_date(last_modified)
            if when is None or modified is None or modified != when:
                return None
    match = _RANGE.match(values[0])
    if match is None:
        return None
    start, end = match.group(1), match.group(2)
    if not start and not end:
        return None
    if not start:
        suffix = int(end)
        if suffix == 0 or total == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, total - suffix), total - 1, total)
    first = int(start)
    last = int(end) if end else total - 1
    if last < first:
        return None
    if first >= total:
        raise Unsatisfiable()
    return ByteRange(first, min(last, total - 1), total)

"""
Conditional requests (RFC 9110 §13): the ``If-*`` and ``Range`` fields of a request, parsed
once into :class:`Conditions`.

The same parse answers cached representations (:meth:`Conditions.precondition_status`,
:meth:`Conditions.range_for`) and gives the headers sent to S3 on a miss
(:meth:`Conditions.upstream_headers`): only well-formed fields, in canonical form. A field
that is not well-formed is ignored, as §13.1 asks of recipients (an invalid date or entity-tag
list, a ``Range`` that is not one byte range); an ``If-Range`` that cannot match (a weak or
invalid validator) means the ``Range`` is ignored (§13.1.5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from twisted.web.http_headers import Headers

from yatagarasu.http.dates import format_http_date, http_date
from yatagarasu.http.fields import only_header
from yatagarasu.http.ranges import ByteRange, RangeSpec, parse_range

_CONDITIONAL = frozenset(
    {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"range"}
)
# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text (§8.8.3).
_TAG = re.compile(rb'[ \t]*((?:W/)?"[\x21\x23-\x7e\x80-\xff]*")[ \t]*')
_LIST_GAP = re.compile(rb"[ \t]*,")


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


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


@dataclass(frozen=True)
class EntityTags:
    """
    An ``If-Match`` / ``If-None-Match`` value: ``*`` or a list of entity tags.

    :ivar tags: the tags as sent (quotes and ``W/`` included); empty for ``*``.
    """

    tags: tuple[bytes, ...]

    @property
    def any(self) -> bool:
        """Whether the value is ``*``."""
        return not self.tags

    @property
    def value(self) -> bytes:
        """The canonical field value."""
        return b", ".join(self.tags) if self.tags else b"*"

    def weak_match(self, etag: bytes | None) -> bool:
        """:returns: whether any tag matches ``etag`` with the weak comparison (§8.8.3.2)."""
        if etag is None:
            return False
        return self.any or any(_opaque(tag) == _opaque(etag) for tag in self.tags)

    def strong_match(self, etag: bytes | None) -> bool:
        """:returns: whether any tag matches ``etag`` with the strong comparison."""
        if etag is None:
            return False
        if self.any:
            return True
        return not etag.startswith(b"W/") and etag in self.tags


def parse_entity_tags(values: Sequence[bytes] | None) -> EntityTags | None:
    """
    :param values: the field lines (a list field: lines are joined with commas).
    :returns: the parsed value, or ``None`` when absent or not ``"*" / #entity-tag``.
    """
    if not values:
        return None
    value = b",".join(values)
    if value.strip(b" \t") == b"*":
        return EntityTags(())
    tags: list[bytes] = []
    position, end = 0, len(value)
    while position < end:
        gap = _LIST_GAP.match(value, position)  # empty list elements are allowed (§5.6.1)
        if gap is not None:
            position = gap.end()
            continue
        tag = _TAG.match(value, position)
        if tag is None:
            if value[position:].strip(b" \t"):
                return None
            break
        tags.append(tag.group(1))
        position = tag.end()
        if position < end and value[position : position + 1] != b",":
            return None
    return EntityTags(tuple(tags)) if tags else None


def _strong_tag(value: bytes) -> bytes | None:
    match = _TAG.fullmatch(value)
    return match.group(1) if match and not match.group(1).startswith(b"W/") else None


@dataclass(frozen=True)
class Conditions:
    """
    The well-formed conditional fields of one request; ``None`` means absent or ignored.

    :ivar if_range: the ``If-Range`` validator (a strong entity tag or epoch seconds), kept
        only together with a ``range``.
    """

    if_match: EntityTags | None = None
    if_unmodified_since: float | None = None
    if_none_match: EntityTags | None = None
    if_modified_since: float | None = None
    range: RangeSpec | None = None
    if_range: bytes | float | None = None

    def precondition_status(
        self, etag: bytes | None, last_modified: bytes | None, *, safe: bool = True
    ) -> int | None:
        """
        Evaluate the preconditions in RFC 9110 §13.2.2 order.

        :param etag: the representation's ``ETag``.
        :param last_modified: its ``Last-Modified`` (parsed only when a date needs it).
        :param safe: GET/HEAD (a failed ``If-None-Match`` gives 304 rather than 412).
        :returns: ``412``, ``304``, or ``None`` to go on.
        """
        if self.if_match is not None:
            if not self.if_match.strong_match(etag):
                return 412
        elif self.if_unmodified_since is not None:
            modified = http_date(last_modified)
            if modified is None or modified > self.if_unmodified_since:
                return 412
        if self.if_none_match is not None:
            if self.if_none_match.weak_match(etag):
                return 304 if safe else 412
            return None
        if self.if_modified_since is not None:
            modified = http_date(last_modified)
            if modified is not None and modified <= self.if_modified_since:
                return 304
        return None

    def if_range_holds(self, etag: bytes | None, last_modified: bytes | None) -> bool:
        """
        :param etag: the representation's ``ETag``.
        :param last_modified: its ``Last-Modified``.
        :returns: whether the ``Range`` applies (no ``If-Range``, or its validator matches).
        """
        if self.if_range is None:
            return True
        if isinstance(self.if_range, bytes):
            return etag is not None and not etag.startswith(b"W/") and etag == self.if_range
        return http_date(last_modified) == self.if_range

    def range_for(
        self, total: int, etag: bytes | None, last_modified: bytes | None
    ) -> ByteRange | None:
        """
        :param total: the representation's length.
        :param etag: its ``ETag``.
        :param last_modified: its ``Last-Modified``.
        :returns: the range to serve, or ``None`` to serve everything.
        :raises Unsatisfiable: when the range cannot be satisfied (416).
        """
        if self.range is None or not self.if_range_holds(etag, last_modified):
            return None
        return self.range.resolve(total)

    def without_range(self) -> Conditions:
        """:returns: these conditions for a whole-representation request."""
        return replace(self, range=None, if_range=None)

    def upstream_headers(self) -> Headers:
        """:returns: the fields to send to S3, each in canonical form."""
        headers = Headers()
        if self.if_match is not None:
            headers.setRawHeaders(b"if-match", [self.if_match.value])
        if self.if_unmodified_since is not None:
            headers.setRawHeaders(
                b"if-unmodified-since", [format_http_date(self.if_unmodified_since)]
            )
        if self.if_none_match is not None:
            headers.setRawHeaders(b"if-none-match", [self.if_none_match.value])
        if self.if_modified_since is not None:
            headers.setRawHeaders(b"if-modified-since", [format_http_date(self.if_modified_since)])
        if self.range is not None:
            headers.setRawHeaders(b"range", [self.range.value])
        return headers


NO_CONDITIONS = Conditions()


def parse_conditions(headers: Headers) -> Conditions:
    """
    :param headers: the request headers.
    :returns: their well-formed conditional fields.
    """
    if not is_conditional(headers):
        return NO_CONDITIONS
    wanted = parse_range(headers.getRawHeaders(b"range"))
    validator: bytes | float | None = None
    if wanted is not None and headers.hasHeader(b"if-range"):
        field = only_header(headers, b"if-range")
        validator = None if field is None else _strong_tag(field) or http_date(field)
        if validator is None:
            wanted = None  # an If-Range that cannot match: the Range is ignored (§13.1.5)
    return Conditions(
        if_match=parse_entity_tags(headers.getRawHeaders(b"if-match")),
        if_unmodified_since=http_date(only_header(headers, b"if-unmodified-since")),
        if_none_match=parse_entity_tags(headers.getRawHeaders(b"if-none-match")),
        if_modified_since=http_date(only_header(headers, b"if-modified-since")),
        range=wanted,
        if_range=validator,
    )

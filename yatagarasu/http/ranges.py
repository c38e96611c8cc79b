"""
The ``Range`` request header (RFC 9110 §14.1.2): parsed once, resolved against a length
(§14.1.1, §15.5.17), and written back in one canonical form for S3.

Only a single ``bytes`` range is served; a field with several ranges, another unit or a syntax
error is ignored (the whole representation is answered), as §14.2 allows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Positions beyond this are clamped: no object is that large (S3's limit is 5 TiB), and
#: ``int()`` of thousands of digits is both slow and refused by Python.
MAX_POSITION = 2**63 - 1
_DIGITS = len(str(MAX_POSITION))

# ranges-specifier with one range-spec; OWS only where the list rule allows it (§5.6.1).
_RANGE = re.compile(rb"[ \t]*bytes=[ \t]*([0-9]*)-([0-9]*)[ \t]*", re.IGNORECASE)


def _position(digits: bytes) -> int:
    digits = digits.lstrip(b"0") or b"0"
    return MAX_POSITION if len(digits) > _DIGITS else min(int(digits), MAX_POSITION)


class Unsatisfiable(Exception):
    """The range does not overlap the representation: answer 416."""


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable range: bytes ``first``..``last`` (inclusive) of ``total``."""

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


@dataclass(frozen=True)
class RangeSpec:
    """
    One well-formed byte range, not yet applied to a length.

    :ivar first: first-pos, or ``None`` for a suffix range.
    :ivar last: last-pos (``None``: to the end), or the suffix length when ``first`` is ``None``.
    """

    first: int | None
    last: int | None

    @property
    def value(self) -> bytes:
        """The canonical header value (what is sent to S3)."""
        if self.first is None:
            return b"bytes=-%d" % (self.last or 0)
        if self.last is None:
            return b"bytes=%d-" % self.first
        return b"bytes=%d-%d" % (self.first, self.last)

    def resolve(self, total: int) -> ByteRange | None:
        """
        :param total: the representation's length.
        :returns: the bytes to send (last-pos clamped to the length), or ``None`` to send the
            whole representation: a suffix of an empty one is satisfiable but has no bytes a
            ``206`` could describe.
        :raises Unsatisfiable: first-pos at or past the length, or a zero-length suffix.
        """
        if self.first is None:
            suffix = self.last or 0
            if suffix == 0:
                raise Unsatisfiable()
            if total == 0:
                return None
            return ByteRange(max(0, total - suffix), total - 1, total)
        if self.first >= total:
            raise Unsatisfiable()
        last = total - 1 if self.last is None else min(self.last, total - 1)
        return ByteRange(self.first, last, total)


def parse_range(values: Sequence[bytes] | None) -> RangeSpec | None:
    """
    :param values: the ``Range`` field lines, if any.
    :returns: the single byte range asked for, or ``None`` to ignore the field (absent,
        several lines or ranges, another unit, last-pos before first-pos, not the grammar).
    """
    if not values or len(values) != 1:
        return None
    match = _RANGE.fullmatch(values[0])
    if match is None:
        return None
    start, end = match.group(1), match.group(2)
    if not start:
        return RangeSpec(None, _position(end)) if end else None
    first = _position(start)
    if not end:
        return RangeSpec(first, None)
    last = _position(end)
    return RangeSpec(first, last) if last >= first else None

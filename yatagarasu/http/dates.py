"""HTTP dates (RFC 9110 §5.6.7): parsed to epoch seconds, written as IMF-fixdate."""

from __future__ import annotations

from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime


def http_date(value: bytes | None) -> float | None:
    """
    :param value: a header value such as ``Wed, 21 Oct 2026 07:28:00 GMT``.
    :returns: epoch seconds, or ``None`` when absent or not a date.
    """
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
        if when.tzinfo is None:  # asctime dates carry no zone: HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def format_http_date(seconds: float) -> bytes:
    """
    :param seconds: epoch seconds (as :func:`http_date` returns them).
    :returns: the IMF-fixdate form, e.g. ``Wed, 21 Oct 2026 07:28:00 GMT``.
    """
    return formatdate(seconds, usegmt=True).encode("ascii")

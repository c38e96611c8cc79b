"""HTTP dates (RFC 9110 §5.6.7) as epoch seconds."""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime


def http_date(value: bytes | None) -> float | None:
    """
    :param value: a header value such as ``Wed, 21 Oct 2026 07:28:00 GMT``.
    :returns: epoch seconds, or ``None`` when absent or not a date.
    """
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime dates carry no zone: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return when.timestamp()

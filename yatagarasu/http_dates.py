"""HTTP dates (RFC 9110 §5.6.7) as epoch seconds."""

from __future__ import annotations

from email.utils import parsedate_to_datetime


def http_date(value: bytes | None) -> float | None:
    """
    :param value: a header value such as ``Wed, 21 Oct 2026 07:28:00 GMT``.
    :returns: epoch seconds, or ``None`` when absent or not a date.
    """
    if not value:
        return None
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None

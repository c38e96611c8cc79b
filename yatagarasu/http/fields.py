"""Reading header fields from Twisted's ``Headers``."""

from __future__ import annotations

from twisted.web.http_headers import Headers


def first_header(headers: Headers, name: bytes) -> bytes | None:
    """:returns: the first value of header ``name``, or ``None``."""
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def only_header(headers: Headers, name: bytes) -> bytes | None:
    """
    :returns: the value of a singleton field ``name``, or ``None`` when it is absent or was
        sent more than once (then it is invalid, RFC 9110 §5.3).
    """
    values = headers.getRawHeaders(name)
    return values[0] if values and len(values) == 1 else None

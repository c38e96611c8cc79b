"""Request ids: honour a well-formed incoming one, else make one."""

from __future__ import annotations

import re
import uuid

from twisted.web.http_headers import Headers

_VALID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")
_INCOMING = (b"x-request-id", b"x-correlation-id")


def request_id_for(headers: Headers) -> str:
    """
    Pick the id of a request.

    :param headers: the request headers.
    :returns: the incoming ``X-Request-ID`` (or ``X-Correlation-ID``) when it matches
        ``[A-Za-z0-9._-]{1,128}``, else a new UUID4.
    """
    for name in _INCOMING:
        values = headers.getRawHeaders(name)
        if values and _VALID.match(values[0]):
            return values[0].decode("ascii")
    return str(uuid.uuid4())

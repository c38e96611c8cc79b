"""Request ids: honour a well-formed incoming one, else make one."""

from __future__ import annotations

import os
import re

from twisted.web.http_headers import Headers

_VALID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")
_INCOMING = (b"x-request-id", b"x-correlation-id")
#: the UUID variant nibble (RFC 9562: binary 10xx) for each random hex digit
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """
    Make a random (version 4) UUID in its text form.

    The same value as ``str(uuid.uuid4())``, built from the random bytes directly: it is
    made for every request, and ``uuid.UUID`` validates and converts more than twice as long.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


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
    return new_request_id()

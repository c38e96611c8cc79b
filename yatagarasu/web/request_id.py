"""Request ids: honour a well-formed incoming one, else make one."""

from __future__ import annotations

import os
import re

from twisted.web.http_headers import Headers

_VALID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")
_INCOMING = (b"x-request-id", b"x-correlation-id")
#: the UUID variant nibble (RFC 9562: binary 10xx) for each random hex digit
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class _RandomHex:
    """``os.urandom`` read 4 KiB at a time (one system call per 256 ids), handed out as hex."""

    def __init__(self) -> None:
        self._pool = ""
        self._offset = 0

    def take32(self) -> str:
        """:returns: 32 random hex digits."""
        if self._offset == len(self._pool):
            self._pool, self._offset = os.urandom(4096).hex(), 0
        start = self._offset
        self._offset = start + 32
        return self._pool[start : start + 32]

    def discard(self) -> None:
        """Forget the digits not handed out yet (a forked child must not repeat its parent's)."""
        self._pool, self._offset = "", 0


_random = _RandomHex()
os.register_at_fork(after_in_child=_random.discard)


def new_request_id() -> str:
    """
    Make a random (version 4) UUID in its text form.

    The same kind of value as ``str(uuid.uuid4())`` (the operating system's randomness),
    built from the random digits directly: it is made for every request, and ``uuid.UUID``
    validates and converts more than twice as long.
    """
    h = _random.take32()
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

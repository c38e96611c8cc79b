"""Checks on the raw request target, done before any routing."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

#: what makes a target worth a closer look (anywhere in it: a query may hold it too)
_SUSPECT = re.compile(rb"[%\\\x00]|\.\.")
# Enough rounds to see through double and triple encoding (%252e%252e → %2e%2e → ..).
_DECODE_ROUNDS = 3


def traversal_reason(raw_target: bytes) -> str | None:
    """
    Tell whether a raw request target tries path traversal or smuggles bytes it must not.

    ``..`` segments count in any encoding (``%2e%2e``, ``..%2f``, double encoding) and with
    either slash; a backslash or a NUL anywhere in the path is refused too. A key may still
    contain an encoded slash (``a%2Fb``): only ``..`` segments are traversal.

    :param raw_target: the request target exactly as received (query string included).
    :returns: why the target is refused, or ``None`` when it is acceptable.
    """
    if _SUSPECT.search(raw_target) is None:
        return None  # the common case: nothing to decode, nothing to refuse
    candidate = raw_target.split(b"?", 1)[0]
    for _ in range(_DECODE_ROUNDS + 1):
        if b"\0" in candidate:
            return "NUL byte in path"
        if b"\\" in candidate:
            return "backslash in path"
        if b".." in candidate and b".." in candidate.replace(b"\\", b"/").split(b"/"):
            return "'..' segment in path"
        decoded = unquote_to_bytes(candidate)
        if decoded == candidate:
            return None
        candidate = decoded
    return "path is encoded too many times"

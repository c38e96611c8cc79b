"""
Reason phrases of HTTP status codes, from RFC 9110 §15 (and RFC 6585 for 428, 429, 431, 511).

The one table used for the status line and for the ``error`` field of the proxy's JSON
errors. twisted.web's own table follows RFC 2616 (``Gateway Time-out``, ``Request Entity Too
Large``, ``Requested Range Not Satisfiable``...), so the proxy never lets Twisted choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

PHRASES: Mapping[int, str] = MappingProxyType({
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    202: "Accepted",
    203: "Non-Authoritative Information",
    204: "No Content",
    205: "Reset Content",
    206: "Partial Content",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    426: "Upgrade Required",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    511: "Network Authentication Required",
})  # fmt: skip

#: RFC 9110 §15's names of the five classes, for codes the table does not know (an S3
#: answering 599, say): a client must treat an unknown code as the x00 of its class.
_CLASS_PHRASES = {
    1: "Informational",
    2: "Successful",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
}

_PHRASE_BYTES = {code: phrase.encode("ascii") for code, phrase in PHRASES.items()}


def reason_phrase(status: int) -> str:
    """
    :param status: an HTTP status code (100-599).
    :returns: its RFC 9110 reason phrase, or the name of its class for an unregistered code
        (``"Server Error"`` for 599).
    """
    phrase = PHRASES.get(status)
    if phrase is not None:
        return phrase
    return _CLASS_PHRASES.get(status // 100, "Unknown Status")


def reason_phrase_bytes(status: int) -> bytes:
    """
    :param status: an HTTP status code (100-599).
    :returns: :func:`reason_phrase` encoded for the status line.
    """
    phrase = _PHRASE_BYTES.get(status)
    if phrase is not None:
        return phrase
    return reason_phrase(status).encode("ascii")

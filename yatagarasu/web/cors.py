"""Per-bucket CORS: preflight answers and the headers added to every response."""

from __future__ import annotations

from twisted.web.server import Request

from yatagarasu.config.schema import CorsConfig
from yatagarasu.http.methods import BUCKET_METHODS, READ_METHODS

_EXPOSED = (
    b"ETag, Content-Length, Content-Range, Content-Type, Last-Modified, "
    b"X-Request-ID, X-Correlation-ID, X-Cache"
)


class CorsPolicy:
    """
    Decide and write the CORS headers of one bucket.

    Origins match exactly (scheme, host and port), or any origin with ``'*'``; request
    header names match case-insensitively.

    :param config: the bucket's ``cors`` section.
    """

    def __init__(self, config: CorsConfig) -> None:
        self._any_origin = "*" in config.allowed_origins
        self._origins = frozenset(o.encode("utf-8") for o in config.allowed_origins)
        self._headers = frozenset(h.lower().encode("ascii") for h in config.allowed_headers)
        self._max_age = b"%d" % config.max_age

    def _allowed_origin(self, request: Request) -> bytes | None:
        origin = request.getHeader(b"origin")
        if origin is None:
            return None
        if self._any_origin or origin in self._origins:
            return origin
        return None

    def decorate(self, request: Request) -> None:
        """
        Add ``Access-Control-Allow-Origin`` (and ``Vary``, exposed headers) to the response
        when the request comes from an allowed origin. Call before anything is written, for
        success and error responses alike.

        :param request: the request being answered.
        """
        origin = self._allowed_origin(request)
        request.responseHeaders.addRawHeader(b"vary", b"Origin")
        if origin is not None:
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"access-control-expose-headers", _EXPOSED)

    def preflight(self, request: Request) -> str | None:
        """
        Answer a preflight ``OPTIONS`` (headers only; the caller sets the status).

        :param request: the ``OPTIONS`` request.
        :returns: ``None`` when the preflight is allowed (headers written), else why not.
        """
        origin = self._allowed_origin(request)
        request.responseHeaders.addRawHeader(b"vary", b"Origin")
        if origin is None:
            return "origin not allowed"
        method = (request.getHeader(b"access-control-request-method") or b"").strip()
        if method not in READ_METHODS:
            return "method not allowed"
        requested = request.getHeader(b"access-control-request-headers") or b""
        names = [n.strip().lower() for n in requested.split(b",") if n.strip()]
        if any(n not in self._headers for n in names):
            return "request headers not allowed"
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-allow-methods", BUCKET_METHODS)
        if names:
            request.setHeader(b"access-control-allow-headers", b", ".join(names))
        request.setHeader(b"access-control-max-age", self._max_age)
        return None

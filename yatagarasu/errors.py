"""
The exception tree.

Every error the proxy can turn into an HTTP response carries its status and, for errors that
came from S3, the S3 error code; configuration errors carry the dotted key path they concern.
The three refusals at the end are what an auth scheme (``IAuthScheme``) fails with.
"""

from __future__ import annotations

from collections.abc import Sequence


class YatagarasuError(Exception):
    """Base class of every error raised by yatagarasu."""


class ConfigError(YatagarasuError):
    """
    The configuration is invalid.

    :ivar path: dotted key path of the offending value (``buckets[1].s3.timeout``), or ``""``
        for the document as a whole.
    :ivar message: what is wrong with it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class HTTPError(YatagarasuError):
    """
    An error that becomes a JSON error response built by the proxy.

    :ivar status: HTTP status code to answer with.
    :ivar message: human readable explanation (safe to show to clients: no secrets).
    :ivar s3_code: the S3 error code (``NoSuchKey``) when the error came from S3.
    :ivar headers: extra response headers (``Retry-After``, ``Allow``, ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        s3_code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.s3_code = s3_code
        self.headers = tuple(headers)

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


class UpstreamError(HTTPError):
    """
    S3 could not give us a usable response (after retries).

    :ivar retryable: whether another attempt could succeed (connect errors, timeouts, 5xx).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retryable: bool,
        s3_code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(status, message, s3_code=s3_code, headers=headers)
        self.retryable = retryable


class AuthenticationRequired(HTTPError):
    """No credentials at all: 401 with a ``Bearer`` challenge."""

    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(401, message, headers=[("WWW-Authenticate", 'Bearer realm="yatagarasu"')])


class InvalidCredentials(HTTPError):
    """Credentials present but not acceptable (bad signature, expired...): 401 ``invalid_token``."""

    def __init__(self, message: str = "invalid token") -> None:
        super().__init__(
            401,
            message,
            headers=[("WWW-Authenticate", 'Bearer realm="yatagarasu", error="invalid_token"')],
        )


class Forbidden(HTTPError):
    """Valid credentials that are not allowed here (claims rules), or a blocked address: 403."""

    def __init__(self, message: str = "forbidden") -> None:
        super().__init__(403, message)


class RateLimited(HTTPError):
    """
    A rate limit refused the request: 429 with ``Retry-After`` and the ``RateLimit-*`` fields.

    :ivar scope: the limit that refused it (``global``, ``per_ip``, ``bucket``, ``per_user``).
    """

    def __init__(self, scope: str, headers: Sequence[tuple[str, str]]) -> None:
        super().__init__(429, f"rate limit exceeded ({scope})", headers=headers)
        self.scope = scope

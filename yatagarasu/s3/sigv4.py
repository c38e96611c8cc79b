"""AWS Signature Version 4 for S3 (header-based auth, ``AWS4-HMAC-SHA256``).

The pure functions (:func:`encode_key`, :func:`canonical_request`,
:func:`string_to_sign`, :func:`derive_signing_key`) follow the published
algorithm step by step.  :class:`SigV4Signer` is the hot-path entry point used
for every upstream request: it builds the canonical request for its fixed set
of signed headers directly and caches the derived signing key per UTC date.

S3 differs from other services in two ways that matter here:

* the canonical URI is the path exactly as sent on the wire (S3 does not
  double-encode and does not normalise ``.``/``..`` or ``//`` segments);
* the ``x-amz-content-sha256`` header is mandatory and is signed.

Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "EMPTY_PAYLOAD_SHA256",
    "UNSIGNED_PAYLOAD",
    "Credentials",
    "SigV4Signer",
    "canonical_request",
    "derive_signing_key",
    "encode_key",
    "string_to_sign",
]

EMPTY_PAYLOAD_SHA256: str = hashlib.sha256(b"").hexdigest()
"""Hex SHA-256 of the empty payload (the body of every GET/HEAD)."""

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
"""Value of ``x-amz-content-sha256`` when the payload is deliberately not signed."""

ALGORITHM = "AWS4-HMAC-SHA256"
_TERMINATOR = "aws4_request"

_sha256 = hashlib.sha256
_hmac_digest = hmac.digest

# Unreserved characters (RFC 3986) plus '/', which S3 keeps in object keys.
_SAFE_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/")
_KEY_ENCODE_TABLE: tuple[str, ...] = tuple(
    chr(b) if b in _SAFE_KEY_CHARS else f"%{b:02X}" for b in range(256)
)
_SAFE_KEY_RE = re.compile(r"[A-Za-z0-9\-._~/]*")

_H_HOST = b"host"
_H_DATE = b"x-amz-date"
_H_CONTENT_SHA256 = b"x-amz-content-sha256"
_H_SECURITY_TOKEN = b"x-amz-security-token"
_H_AUTHORIZATION = b"authorization"


@dataclass(frozen=True)
class Credentials:
    """An AWS access key pair, optionally with an STS session token.

    The secret key and session token are left out of ``repr()`` so that the
    credentials can never end up in a log line by accident.
    """

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def encode_key(key: str) -> str:
    """URI-encode an S3 object key for the request path, per AWS rules.

    The key is encoded as UTF-8 and every byte except the unreserved characters
    ``A-Z a-z 0-9 - . _ ~`` and ``/`` is percent-encoded with uppercase hex.
    S3 does not double-encode, so the result is both the path sent on the wire
    and the canonical URI used for signing.

    :param key: the object key as stored in S3 (any Unicode string).
    :returns: the encoded key, e.g. ``'a b/ñ.txt'`` -> ``'a%20b/%C3%B1.txt'``.
    :raises UnicodeEncodeError: if ``key`` contains lone surrogates.
    """
    if _SAFE_KEY_RE.fullmatch(key) is not None:
        return key
    return "".join(map(_KEY_ENCODE_TABLE.__getitem__, key.encode("utf-8")))


def _trimall(value: str) -> str:
    """Collapse internal whitespace runs to one space and strip both ends.

    :param value: a raw header value.
    :returns: the value in SigV4 canonical form.
    """
    return " ".join(value.split())


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    signed_headers: str,
    payload_hash: str,
) -> str:
    """Build the SigV4 canonical request.

    Header names are lowercased, values are trimmed (leading/trailing
    whitespace removed, internal runs collapsed to one space), the headers are
    sorted by name and repeated names are merged into one comma-separated line
    (keeping their relative order).

    :param method: the HTTP method, uppercase (``'GET'``, ``'HEAD'``).
    :param path: the canonical URI; for S3 the encoded path exactly as sent.
    :param query: the canonical query string (already encoded and sorted), or ``''``.
    :param headers: the headers to sign as ``(name, value)`` pairs; must cover
        exactly the names listed in ``signed_headers``.
    :param signed_headers: lowercase header names, sorted, joined with ``';'``.
    :param payload_hash: hex SHA-256 of the body, or :data:`UNSIGNED_PAYLOAD`.
    :returns: the canonical request (lines joined with ``'\\n'``).
    """
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(_trimall(value))
    canonical_headers = "".join(f"{name}:{','.join(merged[name])}\n" for name in sorted(merged))
    return (
        f"{method}\n{path or '/'}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    )


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    """Build the SigV4 string to sign.

    :param amz_date: the request timestamp, ``YYYYMMDD'T'HHMMSS'Z'``.
    :param scope: the credential scope, ``date/region/service/aws4_request``.
    :param canonical_request: the output of :func:`canonical_request`.
    :returns: the string to sign (lines joined with ``'\\n'``).
    """
    digest = _sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def derive_signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """Derive the SigV4 signing key (``kSigning``).

    :param secret_key: the AWS secret access key.
    :param date: the scope date, ``YYYYMMDD``.
    :param region: the region name, e.g. ``'us-east-1'``.
    :param service: the service name, ``'s3'`` for S3.
    :returns: the 32-byte HMAC-SHA256 signing key.
    """
    k_date = _hmac_digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
    k_region = _hmac_digest(k_date, region.encode(), "sha256")
    k_service = _hmac_digest(k_region, service.encode(), "sha256")
    return _hmac_digest(k_service, _TERMINATOR.encode(), "sha256")


def _amz_date(now: datetime) -> str:
    """Format ``now`` as a SigV4 timestamp in UTC.

    :param now: an aware datetime, or a naive one taken to be UTC already.
    :returns: ``YYYYMMDD'T'HHMMSS'Z'``.
    """
    offset = now.utcoffset()
    if offset:
        now = now - offset
    return (
        f"{now.year:04d}{now.month:02d}{now.day:02d}"
        f"T{now.hour:02d}{now.minute:02d}{now.second:02d}Z"
    )


class SigV4Signer:
    """Signs requests for one (credentials, region, service).

    The derived signing key is cached for the current UTC date; a request on a
    different date re-derives it.  Everything that does not depend on the
    request (credential scope suffix, signed-header list, encoded token) is
    computed once in the constructor.
    """

    __slots__ = (
        "_auth_prefix",
        "_credentials",
        "_key_cache",
        "_region",
        "_scope_suffix",
        "_service",
        "_signed_headers",
        "_token_bytes",
        "_token_line",
    )

    def __init__(self, credentials: Credentials, region: str, service: str = "s3") -> None:
        """Prepare a signer.

        :param credentials: the access key, secret key and optional session token.
        :param region: the signing region, e.g. ``'us-east-1'``.
        :param service: the signing service name; ``'s3'`` unless talking to
            something exotic.
        """
        self._credentials = credentials
        self._region = region
        self._service = service
        self._scope_suffix = f"/{region}/{service}/{_TERMINATOR}"
        token = credentials.session_token
        if token:
            self._signed_headers = "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
            self._token_line = f"x-amz-security-token:{_trimall(token)}\n"
            self._token_bytes: bytes | None = token.encode("utf-8")
        else:
            self._signed_headers = "host;x-amz-content-sha256;x-amz-date"
            self._token_line = ""
            self._token_bytes = None
        self._auth_prefix = f"{ALGORITHM} Credential={credentials.access_key}/"
        self._key_cache: tuple[str, bytes] = ("", b"")

    def _signing_key(self, date: str) -> bytes:
        """Return the signing key for ``date``, deriving it on a date change.

        :param date: the scope date, ``YYYYMMDD``.
        :returns: the signing key for that date.
        """
        cached_date, key = self._key_cache
        if cached_date != date:
            key = derive_signing_key(
                self._credentials.secret_key, date, self._region, self._service
            )
            # One tuple assignment so the date and key can never be seen out of step.
            self._key_cache = (date, key)
        return key

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        now: datetime,
        query: str = "",
        payload_hash: str = EMPTY_PAYLOAD_SHA256,
    ) -> list[tuple[bytes, bytes]]:
        """Sign one request and return the headers to send.

        :param method: the HTTP method as sent, uppercase (``'GET'``, ``'HEAD'``).
        :param host: exactly the ``Host`` header value sent, including ``':port'``
            when the endpoint uses a non-default port. Must be ASCII.
        :param path: the already-encoded path exactly as sent on the wire
            (e.g. ``'/bucket/a%20b.txt'``); see :func:`encode_key`.
        :param now: the signing time; aware datetimes are converted to UTC,
            naive ones are taken to be UTC.
        :param query: the canonical query string (encoded, sorted), ``''`` for none.
        :param payload_hash: hex SHA-256 of the body, or :data:`UNSIGNED_PAYLOAD`.
        :returns: ``(name, value)`` byte pairs with lowercase names, in this order:
            ``host``, ``x-amz-date``, ``x-amz-content-sha256``,
            ``x-amz-security-token`` (only with a session token), ``authorization``.
        """
        amz_date = _amz_date(now)
        date = amz_date[:8]
        signed_headers = self._signed_headers
        creq = (
            f"{method}\n{path or '/'}\n{query}\n"
            f"host:{host}\n"
            f"x-amz-content-sha256:{payload_hash}\n"
            f"x-amz-date:{amz_date}\n"
            f"{self._token_line}\n"
            f"{signed_headers}\n{payload_hash}"
        )
        scope = date + self._scope_suffix
        sts = f"{ALGORITHM}\n{amz_date}\n{scope}\n{_sha256(creq.encode('utf-8')).hexdigest()}"
        signature = _hmac_digest(self._signing_key(date), sts.encode(), "sha256").hex()
        authorization = (
            f"{self._auth_prefix}{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        )
        headers = [
            (_H_HOST, host.encode("ascii")),
            (_H_DATE, amz_date.encode()),
            (_H_CONTENT_SHA256, payload_hash.encode("ascii")),
        ]
        if self._token_bytes is not None:
            headers.append((_H_SECURITY_TOKEN, self._token_bytes))
        headers.append((_H_AUTHORIZATION, authorization.encode()))
        return headers

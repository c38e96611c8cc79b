"""
``POST /admin/sign``: make a signed link, behind the admin API's JWT check.

The body is a JSON object: ``path`` (required: the URL path, bucket prefix included, e.g.
``/private/cat.png``), ``expires_in`` (seconds, default 3600, at most the bucket's
``max_lifetime_seconds``), ``method`` (``GET``, the default, or ``HEAD``) and ``client_ip``
(bind the link to that client address). The bucket is the one whose prefix matches the path
(as for requests); it must list the ``signed_url`` scheme. The answer is
``{"status": "success", "data": {"url", "bucket", "expires", "kid"}}``: ``url`` is the path
with the query string the link needs. The bucket's scheme signs it (its first key, its clock):
the link verifies exactly as the scheme checks it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from yatagarasu.auth.signed_url import SignedUrlScheme
from yatagarasu.config.schema import BucketConfig
from yatagarasu.errors import HTTPError
from yatagarasu.web.admin import AdminHandler
from yatagarasu.web.site import ProxyRequest

#: what a link is valid for when the request does not say
DEFAULT_LIFETIME_SECONDS = 3600
_FIELDS = frozenset({"path", "expires_in", "method", "client_ip"})
_METHODS = ("GET", "HEAD")


def sign_admin_routes(
    buckets: Sequence[BucketConfig], signers: Mapping[str, SignedUrlScheme]
) -> dict[tuple[bytes, str], AdminHandler]:
    """
    :param buckets: every configured bucket (to route a path as a request would be).
    :param signers: per bucket name, its ``signed_url`` scheme.
    :returns: the ``/admin/sign`` route.
    """
    routes = sorted(buckets, key=lambda b: len(b.prefix_segments), reverse=True)

    async def post(request: ProxyRequest, segments: list[str]) -> tuple[int, Any]:
        if segments:
            raise HTTPError(404, "no such admin route")
        body = _body(request)
        path = body["path"]
        bucket = _bucket_for(routes, path)
        signer = signers.get(bucket.name)
        if signer is None:
            raise HTTPError(400, f"bucket {bucket.name!r} does not accept signed links")
        lifetime = body.get(
            "expires_in", min(DEFAULT_LIFETIME_SECONDS, signer.max_lifetime_seconds)
        )
        try:
            link = signer.sign(
                path, lifetime, method=body.get("method", "GET"), client_ip=body.get("client_ip")
            )
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        document = {
            "url": link.url,
            "bucket": bucket.name,
            "expires": link.expires,
            "kid": link.kid,
        }
        return 200, {"status": "success", "data": document}

    return {(b"POST", "sign"): post}


def _body(request: ProxyRequest) -> dict[str, Any]:
    """:returns: the request's JSON object, its fields checked; :raises HTTPError: 400."""
    content = request.content
    raw = content.read() if content is not None else b""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise HTTPError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, 'the body must be a JSON object such as {"path": "/bucket/key"}')
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise HTTPError(400, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    path = body.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise HTTPError(400, "path must be a URL path starting with /")
    lifetime = body.get("expires_in", DEFAULT_LIFETIME_SECONDS)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int):
        raise HTTPError(400, "expires_in must be a whole number of seconds")
    if body.get("method", "GET") not in _METHODS:
        raise HTTPError(400, f"method must be one of {', '.join(_METHODS)}")
    client_ip = body.get("client_ip")
    if client_ip is not None and not isinstance(client_ip, str):
        raise HTTPError(400, "client_ip must be an address or null")
    return body


def _bucket_for(routes: Sequence[BucketConfig], path: str) -> BucketConfig:
    """:returns: the bucket a request for ``path`` goes to; :raises HTTPError: 404."""
    segments = tuple(unquote(path).split("/")[1:])
    for bucket in routes:
        prefix = bucket.prefix_segments
        if segments[: len(prefix)] == prefix and any(segments[len(prefix) :]):
            return bucket
    raise HTTPError(404, "no bucket serves this path (or it names no object)")

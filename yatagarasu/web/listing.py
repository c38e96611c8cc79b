"""
Directory listings: ``GET /prefix/dir/`` answered from one ListObjectsV2 page, rendered as
HTML (every key escaped) or JSON, paginated with ``?continuation_token=``, and kept in the
bucket's cache layers for ``listing.cache_ttl_seconds`` under a key of their own.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime

from yatagarasu.cache.tiered import TieredCache
from yatagarasu.config.schema import BucketConfig, ListingConfig
from yatagarasu.errors import HTTPError
from yatagarasu.s3.errors import upstream_error
from yatagarasu.s3.listing import MAX_TOKEN_LENGTH, ListPage, read_list_page
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import CacheEntry, CacheKey, MappedBody
from yatagarasu.web.responses import write_body
from yatagarasu.web.site import ProxyRequest

#: the query parameter that carries S3's continuation token, opaque, from page to page
TOKEN_PARAMETER = b"continuation_token"

_CONTENT_TYPES = {"html": b"text/html; charset=utf-8", "json": b"application/json"}

#: a listing page links to keys only: no script, no frame, nothing fetched but inline style
_HTML_POLICY = b"default-src 'none'; style-src 'unsafe-inline'; img-src 'none'"

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:.2em 1em;text-align:left}td.size{text-align:right}"
)


class DirectoryListing:
    """
    The listing side of one bucket (``listing.enabled``).

    :param bucket: the bucket's configuration (``listing``, ``path_prefix``, ``name``).
    :param client: the bucket's upstreams.
    :param clock: time (cache freshness, the body read timeout).
    :param idle_seconds: how long S3's listing body may take to arrive.
    :param cache: the tiered cache when the bucket caches (``None``: every listing asks S3).
    """

    def __init__(
        self,
        bucket: BucketConfig,
        client: ReplicaSet,
        clock: IReactorTime,
        idle_seconds: float,
        cache: TieredCache | None = None,
    ) -> None:
        self._bucket = bucket.name
        self._config: ListingConfig = bucket.listing
        self._base = url_base(bucket)
        self._client = client
        self._clock = clock
        self._idle = idle_seconds
        self._cache = cache if bucket.listing.cache_ttl_seconds > 0 else None
        #: ``X-Cache`` of an uncached listing on a bucket that caches (``cache_ttl_seconds: 0``)
        self._uncached_label = b"BYPASS" if cache is not None and self._cache is None else None

    async def serve(self, request: ProxyRequest, prefix: str) -> None:
        """
        Answer a GET or HEAD for a directory with one page of its listing.

        :param request: the authorised request (its ``continuation_token`` query parameter
            selects the page).
        :param prefix: the directory's key prefix (``""`` or ending with ``/``).
        :raises HTTPError: 400 for a malformed token; 404 when a directory other than the
            bucket's top has no key under it; S3's errors as for objects.
        """
        token = continuation_token(request)
        config = self._config
        cache_key = CacheKey(
            self._bucket, prefix, f"listing:{config.format}:{config.max_keys}:{token or ''}"
        )
        content_type = _CONTENT_TYPES[config.format]
        if self._cache is not None:
            found = await self._cache.get(cache_key)
            if found is not None and found.entry.is_fresh(self._clock.seconds()):
                body = _entry_body(found.entry)
                if body is not None:
                    request.set_cache_status(b"HIT")
                    _write(request, content_type, body)
                    return
        response = await self._client.list(prefix, config.max_keys, token)
        if response.code >= 400:
            raise await upstream_error(response, self._clock, self._idle)
        page = await read_list_page(response, prefix, self._clock, self._idle)
        if page.empty and prefix and token is None:
            raise HTTPError(404, "no such directory (no key under this prefix)")
        if config.format == "json":
            body = render_json(page, self._bucket, self._base)
        else:
            body = render_html(page, self._base)
        if self._cache is not None:
            now = self._clock.seconds()
            expires = now + config.cache_ttl_seconds
            entry = CacheEntry(((b"content-type", content_type),), body, now, expires, expires)
            self._cache.store(cache_key, entry)
            request.set_cache_status(b"MISS")
        elif self._uncached_label is not None:
            request.set_cache_status(self._uncached_label)
        _write(request, content_type, body)


def _entry_body(entry: CacheEntry) -> bytes | None:
    if isinstance(entry.body, bytes):
        return entry.body
    if isinstance(entry.body, MappedBody):
        return entry.body.read()
    # A page is at most a few MiB: read it whole (the disk layer keeps bodies in files).
    try:
        body = entry.body.read()
    except OSError:
        return None  # evicted meanwhile: ask S3
    return body if len(body) == entry.body.length else None


def _write(request: ProxyRequest, content_type: bytes, body: bytes) -> None:
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-content-type-options", b"nosniff")
    if content_type.startswith(b"text/html"):
        request.setHeader(b"content-security-policy", _HTML_POLICY)
    write_body(request, 200, content_type, body)


def continuation_token(request: ProxyRequest) -> str | None:
    """
    :param request: a listing request.
    :returns: its ``continuation_token`` query parameter, or ``None`` (the first page).
    :raises HTTPError: 400 when it is repeated, empty, too long or not printable ASCII.
    """
    arguments: dict[bytes, list[bytes]] = request.args or {}
    values = arguments.get(TOKEN_PARAMETER)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, "continuation_token is given more than once")
    raw = values[0]
    if not raw or len(raw) > MAX_TOKEN_LENGTH or not all(0x21 <= c <= 0x7E for c in raw):
        raise HTTPError(400, "malformed continuation_token")
    return raw.decode("ascii")


def url_base(bucket: BucketConfig) -> str:
    """
    :param bucket: a bucket.
    :returns: its URL prefix without a trailing ``/`` (``""`` for a bucket at ``/``).
    """
    return "".join(f"/{segment}" for segment in bucket.prefix_segments)


def key_href(base: str, key: str) -> str:
    """
    :param base: the bucket's :func:`url_base`.
    :param key: an object key or a common prefix.
    :returns: the absolute URL path the proxy serves it at, percent-encoded.
    """
    return f"{base}/{quote(key, safe='/')}"


def next_href(base: str, prefix: str, token: str) -> str:
    """
    :param base: the bucket's :func:`url_base`.
    :param prefix: the directory listed.
    :param token: S3's continuation token.
    :returns: the URL of the next page.
    """
    return f"{key_href(base, prefix)}?{TOKEN_PARAMETER.decode()}={quote(token, safe='')}"


def _name(prefix: str, key: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def render_json(page: ListPage, bucket: str, base: str) -> bytes:
    """
    :param page: a listing page.
    :param bucket: the configured bucket name.
    :param base: the bucket's :func:`url_base`.
    :returns: ``{"bucket", "prefix", "directories": [{"name", "prefix", "href"}],
        "objects": [{"name", "key", "size", "etag", "last_modified", "href"}],
        "next_continuation_token", "next"}`` as UTF-8 JSON.
    """
    document = {
        "bucket": bucket,
        "prefix": page.prefix,
        "directories": [
            {"name": _name(page.prefix, p), "prefix": p, "href": key_href(base, p)}
            for p in page.prefixes
        ],
        "objects": [
            {
                "name": _name(page.prefix, o.key),
                "key": o.key,
                "size": o.size,
                "etag": o.etag,
                "last_modified": o.last_modified,
                "href": key_href(base, o.key),
            }
            for o in page.objects
            if o.key != page.prefix
        ],
        "next_continuation_token": page.next_token,
        "next": next_href(base, page.prefix, page.next_token) if page.next_token else None,
    }
    return json.dumps(document).encode("utf-8")


def render_html(page: ListPage, base: str) -> bytes:
    """
    :param page: a listing page.
    :param base: the bucket's :func:`url_base`.
    :returns: an HTML document: a table of the directories and keys (links to them, sizes,
        last-modified), a parent link, a next-page link; every key, prefix and URL escaped.
    """
    e = html.escape
    title = e(key_href(base, page.prefix) if page.prefix else base + "/")
    rows = []
    if page.prefix:
        parent = page.prefix[:-1].rpartition("/")[0]
        rows.append(_row(key_href(base, parent + "/" if parent else ""), "../", "", ""))
    for common in page.prefixes:
        rows.append(_row(key_href(base, common), _name(page.prefix, common), "-", ""))
    for listed in page.objects:
        if listed.key == page.prefix:
            continue  # the "folder" marker object some tools create
        name = _name(page.prefix, listed.key)
        rows.append(_row(key_href(base, listed.key), name, str(listed.size), listed.last_modified))
    more = ""
    if page.next_token:
        href = e(next_href(base, page.prefix, page.next_token))
        more = f'<p><a rel="next" href="{href}">next page</a></p>'
    document = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Index of {title}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>Index of {title}</h1>\n<table>\n"
        "<tr><th>Name</th><th>Size</th><th>Last modified</th></tr>\n"
        + "".join(rows)
        + f"</table>\n{more}</body></html>\n"
    )
    return document.encode("utf-8")


def _row(href: str, name: str, size: str, modified: str) -> str:
    e = html.escape
    return (
        f'<tr><td><a href="{e(href)}">{e(name)}</a></td>'
        f'<td class="size">{e(size)}</td><td>{e(modified)}</td></tr>\n'
    )

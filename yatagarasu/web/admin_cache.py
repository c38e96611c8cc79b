"""
Cache administration under ``/admin/cache``:

- ``POST /admin/cache/purge`` — everything;
- ``POST /admin/cache/purge/{bucket}`` — one bucket (``?prefix=p``: keys starting with ``p``);
- ``POST /admin/cache/purge/{bucket}/{key...}`` — one object (404 when it was not cached);
- ``GET /admin/cache/stats`` and ``GET /admin/cache/stats/{bucket}``.

Purges clear every layer; with Redis configured, the other instances drop the same entries from
their own memory and disk layers (purge events).
"""

from __future__ import annotations

from typing import Any

from yatagarasu.cache.from_config import CacheSetup
from yatagarasu.cache.tiered import TieredCache
from yatagarasu.config.schema import Config
from yatagarasu.errors import HTTPError
from yatagarasu.values import CacheKey
from yatagarasu.web.admin import AdminHandler
from yatagarasu.web.site import ProxyRequest


def cache_admin_routes(
    caching: CacheSetup, config: Config
) -> dict[tuple[bytes, str], AdminHandler]:
    """
    :param caching: the cache and per-bucket policies.
    :param config: the configuration (to tell unknown buckets from uncached ones).
    :returns: the ``/admin/cache`` routes.
    """
    assert caching.cache is not None
    cache = caching.cache
    buckets = {b.name for b in config.buckets}

    def known(bucket: str) -> str:
        if bucket not in buckets:
            raise HTTPError(404, f"no bucket named {bucket!r}")
        return bucket

    async def post(request: ProxyRequest, segments: list[str]) -> tuple[int, Any]:
        if not segments or segments[0] != "purge":
            raise HTTPError(404, "no such admin route")
        rest = segments[1:]
        if not rest:
            return 200, {"status": "success", "purged": await cache.purge(None, None)}
        bucket = known(rest[0])
        if len(rest) == 1:
            prefix = _argument(request, b"prefix")
            purged = await cache.purge(bucket, prefix)
            return 200, {"status": "success", "bucket": bucket, "prefix": prefix, "purged": purged}
        key = "/".join(rest[1:])
        if not await cache.delete(CacheKey(bucket, key)):
            raise HTTPError(404, f"{bucket}/{key} is not cached")
        return 200, {"status": "success", "bucket": bucket, "key": key, "deleted": True}

    async def get(request: ProxyRequest, segments: list[str]) -> tuple[int, Any]:
        if not segments or segments[0] != "stats" or len(segments) > 2:
            raise HTTPError(404, "no such admin route")
        if len(segments) == 2:
            return 200, {"status": "success", "data": _stats(cache, known(segments[1]))}
        data = _stats(cache, None)
        data["buckets"] = {name: _stats(cache, name) for name in sorted(caching.policies)}
        return 200, {"status": "success", "data": data}

    return {(b"POST", "cache"): post, (b"GET", "cache"): get}


def _stats(cache: TieredCache, bucket: str | None) -> dict[str, Any]:
    total, per_layer = cache.stats(bucket)
    document: dict[str, Any] = total.as_json()
    document["layers"] = {name: stats.as_json() for name, stats in per_layer.items()}
    return document


def _argument(request: ProxyRequest, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    return values[0].decode("utf-8", "replace") if values else None

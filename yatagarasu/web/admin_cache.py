"""
Cache administration under ``/admin/cache``:

- ``POST /admin/cache/purge`` — everything;
- ``POST /admin/cache/purge/{bucket}`` — one bucket (``?prefix=p``: keys starting with ``p``);
- ``POST /admin/cache/purge/{bucket}/{key...}`` — one object (404 when it was not cached);
- ``GET /admin/cache/stats`` and ``GET /admin/cache/stats/{bucket}``.

Purges clear every layer; with Redis configured, the other instances (and the other worker
processes of this one) drop the same entries from their own memory and disk layers (purge
events). Without Redis, the other worker processes hear of a purge through the parent. With
workers, the stats are summed over every worker (``workers``: how many answered).
"""

from __future__ import annotations

from typing import Any

from yatagarasu.cache.from_config import CacheSetup
from yatagarasu.cache.tiered import TieredCache
from yatagarasu.config.schema import Config
from yatagarasu.errors import HTTPError
from yatagarasu.interfaces import ISiblings
from yatagarasu.values import CacheKey
from yatagarasu.web.admin import AdminHandler
from yatagarasu.web.site import ProxyRequest


def cache_admin_routes(
    caching: CacheSetup, config: Config, siblings: ISiblings | None = None
) -> dict[tuple[bytes, str], AdminHandler]:
    """
    :param caching: the cache and per-bucket policies.
    :param config: the configuration (to tell unknown buckets from uncached ones).
    :param siblings: the other worker processes (``None``: a single process).
    :returns: the ``/admin/cache`` routes.
    """
    assert caching.cache is not None
    cache = caching.cache
    buckets = {b.name for b in config.buckets}
    relay = siblings is not None and not cache.broadcasts_purges
    if siblings is not None and relay:
        siblings.receive_purges(cache.on_remote_purge)

    async def announce(bucket: str | None, prefix: str | None, key: str | None) -> None:
        if siblings is not None and relay:
            await siblings.announce_purge(bucket, prefix, key)

    def document(bucket: str | None) -> dict[str, Any]:
        if bucket is not None:
            return _stats(cache, bucket)
        data = _stats(cache, None)
        data["buckets"] = {name: _stats(cache, name) for name in sorted(caching.policies)}
        return data

    async def stats(bucket: str | None) -> dict[str, Any]:
        if siblings is None:
            return document(bucket)
        parts = await siblings.gather("stats", bucket)
        data = _summed(list(parts.values()))
        data["workers"] = {"answered": sorted(parts), "of": siblings.workers}
        return data

    if siblings is not None:
        siblings.serve("stats", document)

    def known(bucket: str) -> str:
        if bucket not in buckets:
            raise HTTPError(404, f"no bucket named {bucket!r}")
        return bucket

    async def post(request: ProxyRequest, segments: list[str]) -> tuple[int, Any]:
        if not segments or segments[0] != "purge":
            raise HTTPError(404, "no such admin route")
        rest = segments[1:]
        if not rest:
            purged = await cache.purge(None, None)
            await announce(None, None, None)
            return 200, {"status": "success", "purged": purged}
        bucket = known(rest[0])
        if len(rest) == 1:
            prefix = _argument(request, b"prefix")
            purged = await cache.purge(bucket, prefix)
            await announce(bucket, prefix, None)
            return 200, {"status": "success", "bucket": bucket, "prefix": prefix, "purged": purged}
        key = "/".join(rest[1:])
        # the siblings may hold it even when this worker does not
        await announce(bucket, None, key)
        if not await cache.delete(CacheKey(bucket, key)):
            raise HTTPError(404, f"{bucket}/{key} is not cached")
        return 200, {"status": "success", "bucket": bucket, "key": key, "deleted": True}

    async def get(request: ProxyRequest, segments: list[str]) -> tuple[int, Any]:
        if not segments or segments[0] != "stats" or len(segments) > 2:
            raise HTTPError(404, "no such admin route")
        bucket = known(segments[1]) if len(segments) == 2 else None
        return 200, {"status": "success", "data": await stats(bucket)}

    return {(b"POST", "cache"): post, (b"GET", "cache"): get}


def _stats(cache: TieredCache, bucket: str | None) -> dict[str, Any]:
    total, per_layer = cache.stats(bucket)
    document: dict[str, Any] = total.as_json()
    document["layers"] = {name: stats.as_json() for name, stats in per_layer.items()}
    document["slices"] = cache.slice_stats(bucket)
    return document


def _summed(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats documents added up, field by field (``hit_rate`` computed again)."""
    total: dict[str, Any] = {}
    for document in documents:
        for name, value in document.items():
            if isinstance(value, dict):
                total[name] = _summed([total.get(name, {}), value])
            elif isinstance(value, int | float) and name != "hit_rate":
                total[name] = total.get(name, 0) + value
    if "hits" in total and "misses" in total:
        looked_up = total["hits"] + total["misses"]
        total["hit_rate"] = total["hits"] / looked_up if looked_up else 0.0
    return total


def _argument(request: ProxyRequest, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    return values[0].decode("utf-8", "replace") if values else None

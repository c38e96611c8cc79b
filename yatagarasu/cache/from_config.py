"""
The ``cache`` section: which layers, in which order, with which settings, and what each
bucket gets. Layer sections (``cache.memory``, ``cache.disk``, ``cache.redis``, or a
third-party layer's ``cache.<name>``) are validated by the layer's own plugin factory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from twisted.application.service import IService

from yatagarasu.cache.tiered import TieredCache
from yatagarasu.config.schema import BucketConfig, Config
from yatagarasu.config.typed import from_raw_beside, join
from yatagarasu.discovery import available, find
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import (
    ICacheLayer,
    ICacheLayerFactory,
    IDefaultTtlCacheLayer,
    ISwitchableCacheLayer,
)
from yatagarasu.values import MIB

#: Freshness lifetime when S3 gives none and neither the configuration nor the first layer
#: (:class:`IDefaultTtlCacheLayer`) says.
DEFAULT_TTL_SECONDS = 3600.0


@dataclass(frozen=True)
class CacheSettings:
    """The ``cache`` keys other than layer sections."""

    enabled: bool = False
    cache_layers: tuple[str, ...] = ("memory",)
    ttl_seconds: float | None = field(default=None, metadata={"aliases": ("default_ttl_seconds",)})
    stale_if_error_seconds: float = 0.0
    slice_size_mb: float | None = None
    slice_threshold_mb: float | None = None

    def check(self, path: str) -> None:
        if self.enabled and not self.cache_layers:
            raise ConfigError(join(path, "cache_layers"), "at least one layer when enabled")
        seen: set[str] = set()
        for i, name in enumerate(self.cache_layers):
            if name in seen:
                raise ConfigError(f"{join(path, 'cache_layers')}[{i}]", f"{name!r} listed twice")
            seen.add(name)
        if self.ttl_seconds is not None and self.ttl_seconds < 0:
            raise ConfigError(join(path, "ttl_seconds"), "must be >= 0")
        if self.stale_if_error_seconds < 0:
            raise ConfigError(join(path, "stale_if_error_seconds"), "must be >= 0")
        check_slicing(self.slice_size_mb, self.slice_threshold_mb, path)


#: the slice size when ``cache.slice_size_mb`` is not set (bounded by the bucket's item cap)
DEFAULT_SLICE_SIZE = 4 * MIB

#: what a slice leaves of the item cap for its entry's headers: layers bound an entry's
#: size, headers included (:attr:`CacheEntry.size`), by their ``max_item_size_mb``
SLICE_HEADROOM = 4096


def check_slicing(size_mb: float | None, threshold_mb: float | None, path: str) -> None:
    """
    :param size_mb: ``slice_size_mb`` (``0`` turns slicing off).
    :param threshold_mb: ``slice_threshold_mb``.
    :param path: the section's dotted path.
    :raises ConfigError: a negative size, or a threshold below the size.
    """
    if size_mb is not None and size_mb < 0:
        raise ConfigError(join(path, "slice_size_mb"), "must be >= 0 (0 turns slicing off)")
    if threshold_mb is not None and threshold_mb <= 0:
        raise ConfigError(join(path, "slice_threshold_mb"), "must be > 0")


@dataclass(frozen=True)
class BucketCachePolicy:
    """
    What one bucket's requests get from the cache.

    :ivar ttl: freshness lifetime when S3 gives none.
    :ivar max_item_size: the largest body stored for this bucket.
    :ivar stale_if_error: seconds past expiry an entry may be served when S3 fails.
    :ivar slice_size: bytes per slice of a sliced object (``0``: this bucket never slices).
    :ivar slice_threshold: objects longer than this are cached as slices.
    """

    ttl: float
    max_item_size: int
    stale_if_error: float
    slice_size: int = 0
    slice_threshold: int = 0

    @property
    def slices(self) -> bool:
        """Whether objects above :attr:`slice_threshold` are cached as slices."""
        return self.slice_size > 0


@dataclass
class CacheSetup:
    """
    :ivar cache: the tiered cache (``None``: no bucket caches).
    :ivar policies: per bucket name, for buckets that cache.
    :ivar sections: per layer name, the configuration section its layer was built from (how
        a hot reload tells a layer it may keep from one it must build anew).
    :ivar layer_services: each layer with its own services (asked for once per layer: a kept
        layer keeps its running services).
    """

    cache: TieredCache | None = None
    policies: dict[str, BucketCachePolicy] = field(default_factory=dict)
    sections: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    layer_services: list[tuple[ICacheLayer, list[IService]]] = field(default_factory=list)

    def services(self) -> list[IService]:
        """:returns: the layers' services, then the cache's purge subscribers."""
        if self.cache is None:
            return []
        own = [service for _, services in self.layer_services for service in services]
        return own + self.cache.purge_subscribers()

    def services_of(self, layers: list[ICacheLayer]) -> list[IService]:
        """:returns: the services of those of ``layers`` that are this setup's."""
        return [
            service
            for layer, services in self.layer_services
            if any(layer is other for other in layers)
            for service in services
        ]

    def reusable(self, name: str, section: Mapping[str, Any]) -> ICacheLayer | None:
        """
        :param name: a layer name.
        :param section: the configuration section a new layer of that name would get.
        :returns: this setup's layer of that name when it was built from an equal section.
        """
        if self.cache is None or self.sections.get(name) != section:
            return None
        return next((layer for layer in self.cache.layers if layer.name == name), None)

    def kept_by(self, newer: CacheSetup) -> list[ICacheLayer]:
        """:returns: this setup's layers that ``newer`` uses too (they must stay open)."""
        if self.cache is None or newer.cache is None:
            return []
        return [layer for layer in self.cache.layers if any(layer is n for n in newer.cache.layers)]


def build_cache(
    config: Config,
    reactor: Any,
    plugins: ModuleType,
    metrics: Any = None,
    previous: CacheSetup | None = None,
) -> CacheSetup:
    """
    :param config: the validated configuration.
    :param reactor: time, threads, TCP.
    :param plugins: the plugin package cache layers are found in.
    :param metrics: a :class:`yatagarasu.metrics.Metrics` (optional).
    :param previous: the running setup (a hot reload): a layer whose section is equal to the
        one it was built from is reused with its contents, and the request-level hit and miss
        counts carry on.
    :returns: the cache and each bucket's policy; nothing is connected or read yet.
    :raises ConfigError: bad settings, unknown or duplicate layers, a listed layer that is
        not enabled, an enabled one that is not listed.
    """
    raw: Mapping[str, Any] = config.cache or {}
    factories = available(ICacheLayerFactory, plugins)
    listed = raw.get("cache_layers", CacheSettings.cache_layers)
    listed_names = set(listed) if isinstance(listed, list | tuple) else set()
    sections = {k: v for k, v in raw.items() if k in factories or k in listed_names}
    settings = _settings({k: v for k, v in raw.items() if k not in sections}, factories)
    wanted = settings.enabled or any(
        b.cache is not None and b.cache.enabled is True for b in config.buckets
    )
    if not wanted:
        if metrics is not None:
            metrics.watch_cache(None)  # a reload that turned caching off
        return CacheSetup()
    layers: list[ICacheLayer] = []
    built: dict[str, Mapping[str, Any]] = {}
    layer_services: list[tuple[ICacheLayer, list[IService]]] = []
    for i, name in enumerate(settings.cache_layers):
        factory = find(ICacheLayerFactory, name, f"cache.cache_layers[{i}]", plugins)
        section = sections.get(name) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"cache.{name}", "expected a mapping")
        built[name] = section
        # An equal section passed the factory's checks when the kept layer was built.
        kept = previous.reusable(name, section) if previous is not None else None
        layer = kept or factory.build(section, f"cache.{name}", reactor)
        services = previous.services_of([layer]) if kept is not None and previous else None
        layer_services.append((layer, layer.services() if services is None else services))
        if ISwitchableCacheLayer.providedBy(layer) and layer.enabled is not True:
            raise ConfigError(
                f"cache.{name}.enabled", "must be true for a layer listed in cache.cache_layers"
            )
        layers.append(layer)
    for name, section in sections.items():
        unlisted = name not in settings.cache_layers
        if unlisted and isinstance(section, Mapping) and section.get("enabled") is True:
            raise ConfigError(
                f"cache.{name}.enabled",
                f"the {name} layer is enabled but not listed in cache.cache_layers",
            )
    cache = TieredCache(layers, reactor, metrics)
    if previous is not None and previous.cache is not None:
        cache.hits, cache.misses = previous.cache.hits, previous.cache.misses
        cache.slice_hits = previous.cache.slice_hits
        cache.slice_misses = previous.cache.slice_misses
    default_ttl = _default_ttl(settings, sections, layers)
    setup = CacheSetup(cache, sections=built, layer_services=layer_services)
    for i, bucket in enumerate(config.buckets):
        policy = _policy(bucket, settings, default_ttl, cache.max_item_size, i)
        if policy is not None:
            setup.policies[bucket.name] = policy
    if metrics is not None:
        metrics.watch_cache(cache)
    return setup


def _default_ttl(
    settings: CacheSettings, sections: Mapping[str, Any], layers: list[ICacheLayer]
) -> float:
    """
    The default freshness of every caching bucket: ``cache.ttl_seconds``, else the default
    of the first layer that has one (:class:`IDefaultTtlCacheLayer`: the seed's
    ``cache.memory.default_ttl_seconds``, wherever memory is in ``cache_layers``), else 3600.

    :raises ConfigError: ``cache.memory.default_ttl_seconds`` while memory is not a layer.
    """
    memory = sections.get("memory")
    seed_ttl = isinstance(memory, Mapping) and "default_ttl_seconds" in memory
    if seed_ttl and "memory" not in settings.cache_layers:
        raise ConfigError(
            "cache.memory.default_ttl_seconds",
            "the memory layer is not in cache.cache_layers; set cache.ttl_seconds instead",
        )
    if settings.ttl_seconds is not None:
        return settings.ttl_seconds
    for layer in layers:
        if IDefaultTtlCacheLayer.providedBy(layer):
            return float(layer.default_ttl_seconds)
    return DEFAULT_TTL_SECONDS


def _settings(raw: Mapping[str, Any], factories: Mapping[str, Any]) -> CacheSettings:
    return from_raw_beside(CacheSettings, raw, "cache", factories)


def _policy(
    bucket: BucketConfig, settings: CacheSettings, default_ttl: float, largest: int, index: int
) -> BucketCachePolicy | None:
    own = bucket.cache
    enabled = settings.enabled if own is None or own.enabled is None else own.enabled
    if not enabled:
        return None
    ttl = own.ttl_seconds if own is not None and own.ttl_seconds is not None else default_ttl
    cap = largest
    if own is not None and own.max_item_size_mb is not None:
        cap = min(cap, int(own.max_item_size_mb * MIB))
    size, threshold = _slicing(bucket, settings, cap, index)
    return BucketCachePolicy(ttl, cap, settings.stale_if_error_seconds, size, threshold)


def _slicing(
    bucket: BucketConfig, settings: CacheSettings, cap: int, index: int
) -> tuple[int, int]:
    """
    A bucket's slice size and threshold: its own ``cache.slice_*_mb``, else the top-level
    ones; the size defaults to :data:`DEFAULT_SLICE_SIZE` (at most the item cap less
    :data:`SLICE_HEADROOM`), the threshold to the item cap.

    :raises ConfigError: a slice that does not fit the bucket's item cap with its headroom
        (no layer could keep it), a threshold below the slice size.
    """
    own = bucket.cache
    size_mb = own.slice_size_mb if own is not None else None
    threshold_mb = own.slice_threshold_mb if own is not None else None
    where = f"buckets[{index}].cache" if size_mb is not None else "cache"
    if size_mb is None:
        size_mb = settings.slice_size_mb
    if threshold_mb is None:
        threshold_mb = settings.slice_threshold_mb
    if size_mb is None:
        size = max(0, min(DEFAULT_SLICE_SIZE, cap - SLICE_HEADROOM))
    else:
        size = int(size_mb * MIB)
        if size and size + SLICE_HEADROOM > cap:
            raise ConfigError(
                f"{where}.slice_size_mb",
                f"{size_mb:g} MiB does not fit the item cap of bucket {bucket.name!r}"
                f" ({cap / MIB:g} MiB) with {SLICE_HEADROOM // 1024} KiB for a slice's headers:"
                " no cache layer would keep a slice",
            )
    threshold = cap if threshold_mb is None else int(threshold_mb * MIB)
    if size and threshold < size:
        raise ConfigError(
            f"{where}.slice_threshold_mb", "must be at least the slice size (slice_size_mb)"
        )
    return size, threshold

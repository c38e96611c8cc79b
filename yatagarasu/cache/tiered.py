"""
The tiered cache: layers read in order, slower hits promoted to faster layers, writes to every
layer that takes the entry. A failing layer is a logged and counted miss, never a failed
request.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from yatagarasu.cache.slicing import is_slice_key, manifest_of
from yatagarasu.interfaces import (
    ICacheLayer,
    ICacheWriter,
    IImmediateCacheLayer,
    IPurgeBroadcaster,
)
from yatagarasu.observability.timings import Phase
from yatagarasu.values import CacheEntry, CacheKey, FileBody, LayerStats, MappedBody

log = Logger()


@dataclass
class WritePlan:
    """Where a response body goes: streamed into ``writers``, buffered for ``buffered``."""

    writers: list[ICacheWriter] = field(default_factory=list)
    buffered: list[ICacheLayer] = field(default_factory=list)

    @property
    def stores(self) -> bool:
        """Whether any layer takes the body."""
        return bool(self.writers or self.buffered)


@dataclass(slots=True)
class Lookup:
    """A cache hit: the entry and the name of the layer that had it."""

    entry: CacheEntry
    layer: str


def _layer_span(
    phase: Phase,
    layer: ICacheLayer,
    started: float,
    ended: float,
    hit: bool,
    error: str | None = None,
) -> None:
    """One layer's answer to a request's lookup, as a child span of the lookup stage."""
    attributes: dict[str, str | bool] = {
        "yatagarasu.cache.layer": layer.name,
        "yatagarasu.cache.hit": hit,
    }
    if error is not None:
        attributes["error.type"] = error
    phase.child(f"cache.get {layer.name}", started, ended, attributes)


def in_bytes(entry: CacheEntry) -> CacheEntry:
    """
    :param entry: an entry, perhaps read from the memory layer.
    :returns: it with its body as ``bytes`` when that is a :class:`MappedBody` (what other
        layers' ``set`` is given), else itself.
    """
    body = entry.body
    return entry.with_body(body.read()) if isinstance(body, MappedBody) else entry


@dataclass
class TieredCache:
    """
    :param layers: the layers, fastest first (``cache.cache_layers`` order).
    :param reactor: time, and the thread pool used to read disk bodies for promotion.
    :param metrics: receives ``cache_error(layer)`` and the timing callbacks (see
        :class:`yatagarasu.metrics.Metrics`, which reads :attr:`hits` and :attr:`misses`).
    """

    layers: Sequence[ICacheLayer]
    reactor: Any
    metrics: Any = None
    #: request-level lookups that hit, by (bucket, layer that had the entry)
    hits: dict[tuple[str, str], int] = field(default_factory=dict, init=False)
    #: request-level lookups that missed in every layer, by bucket
    misses: dict[str, int] = field(default_factory=dict, init=False)
    #: lookups of slices of sliced objects that hit in some layer, by bucket
    slice_hits: dict[str, int] = field(default_factory=dict, init=False)
    #: lookups of slices that missed in every layer (the slice was fetched), by bucket
    slice_misses: dict[str, int] = field(default_factory=dict, init=False)
    _pending: set[Deferred[Any]] = field(default_factory=set)
    #: the layers, from the first, that answer at once (IImmediateCacheLayer)
    _immediate: tuple[IImmediateCacheLayer, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        for layer in self.layers:
            if not IImmediateCacheLayer.providedBy(layer):
                break
            self._immediate += (layer,)

    @property
    def max_item_size(self) -> int:
        """The largest body any layer takes."""
        return max(int(layer.max_item_size) for layer in self.layers)

    def _failed(self, layer: ICacheLayer, operation: str, error: BaseException) -> None:
        log.warn(
            "cache layer {layer} failed to {operation}: {error}",
            layer=layer.name,
            operation=operation,
            error=repr(error),
        )
        if self.metrics is not None:
            self.metrics.cache_error(layer.name)

    def get(self, key: CacheKey) -> Deferred[Lookup | None]:
        """
        Look the key up in every layer, in order; promote a hit to the faster layers.

        :param key: the key.
        :returns: the hit, or ``None`` (counted as a miss).
        """
        found = self.lookup(key)
        return succeed(found) if found is None or isinstance(found, Lookup) else found

    def lookup(
        self, key: CacheKey, phase: Phase | None = None
    ) -> Lookup | Deferred[Lookup | None] | None:
        """
        :meth:`get`, answered directly when the layers that decide it answer at once.

        The leading :class:`IImmediateCacheLayer` layers (memory, disk) are read
        synchronously: a hit there, or a miss in every layer when all of them are immediate,
        comes back as a value — such a hit is served in the request's own call, without a
        Deferred. Past
        them, the lookup goes on with Deferreds.

        :param key: the key.
        :param phase: the request's cache-lookup stage, when it is measured: each layer's
            answer becomes a child span of it.
        :returns: the hit or ``None``, or a Deferred of it.
        """
        for index, layer in enumerate(self._immediate):
            started = self.reactor.seconds()
            try:
                entry = layer.lookup(key)
            except Exception as e:
                self._failed(layer, "get", e)
                entry = None
            if self.metrics is not None:
                self.metrics.cache_get_time(layer.name, self.reactor.seconds() - started)
            if phase is not None:
                _layer_span(phase, layer, started, self.reactor.seconds(), entry is not None)
            if entry is not None:
                return self._hit(key, index, entry)
        if len(self._immediate) == len(self.layers):
            self._miss(key)
            return None
        return self._get_from(key, len(self._immediate), phase)

    def _hit(self, key: CacheKey, index: int, entry: CacheEntry) -> Lookup:
        layer = self.layers[index]
        if key.variant and is_slice_key(key):
            self.slice_hits[key.bucket] = self.slice_hits.get(key.bucket, 0) + 1
        else:
            counter = (key.bucket, layer.name)
            self.hits[counter] = self.hits.get(counter, 0) + 1
        if index > 0:
            self._track(Deferred.fromCoroutine(self._promote(key, entry, self.layers[:index])))
        return Lookup(entry, layer.name)

    def _miss(self, key: CacheKey) -> None:
        counts = self.slice_misses if key.variant and is_slice_key(key) else self.misses
        counts[key.bucket] = counts.get(key.bucket, 0) + 1

    def read_body(self, body: FileBody) -> Deferred[bytes]:
        """
        Read a body kept in a file (a disk layer's), in the reactor's thread pool.

        :param body: where it is.
        :returns: its bytes (fewer than ``body.length`` when the file was cut short).
        :raises OSError: when the file cannot be read (it was evicted meanwhile).
        """
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), body.read)

    def _get_from(
        self, key: CacheKey, index: int, phase: Phase | None = None
    ) -> Deferred[Lookup | None]:
        if index == len(self.layers):
            self._miss(key)
            return succeed(None)
        layer = self.layers[index]
        started = self.reactor.seconds()
        try:
            answer = layer.get(key)
        except Exception:
            answer = fail()
        return answer.addCallbacks(
            self._answered,
            self._layer_failed,
            callbackArgs=(key, index, started, phase),
            errbackArgs=(key, index, started, phase),
        )

    def _answered(
        self,
        entry: CacheEntry | None,
        key: CacheKey,
        index: int,
        started: float,
        phase: Phase | None,
    ) -> Lookup | Deferred[Lookup | None]:
        layer = self.layers[index]
        if self.metrics is not None:
            self.metrics.cache_get_time(layer.name, self.reactor.seconds() - started)
        if phase is not None:
            _layer_span(phase, layer, started, self.reactor.seconds(), entry is not None)
        if entry is None:
            return self._get_from(key, index + 1, phase)
        return self._hit(key, index, entry)

    def _layer_failed(
        self, failure: Failure, key: CacheKey, index: int, started: float, phase: Phase | None
    ) -> Deferred[Lookup | None]:
        failure.trap(Exception)
        if failure.check(CancelledError):
            return fail(failure)  # the client went away: not the layer's failure
        layer = self.layers[index]
        if self.metrics is not None:
            self.metrics.cache_get_time(layer.name, self.reactor.seconds() - started)
        if phase is not None:
            error = type(failure.value).__name__
            _layer_span(phase, layer, started, self.reactor.seconds(), False, error)
        self._failed(layer, "get", cast(Exception, failure.value))
        return self._get_from(key, index + 1, phase)

    async def _promote(
        self, key: CacheKey, entry: CacheEntry, faster: Sequence[ICacheLayer]
    ) -> None:
        takers = [layer for layer in faster if entry.length <= layer.max_item_size]
        if not takers:
            return
        if isinstance(entry.body, FileBody):
            try:
                body = await self.read_body(entry.body)
            except OSError as e:
                log.info("not promoting {key}: {error}", key=key.text, error=str(e))
                return
            if len(body) != entry.length:
                return
            entry = entry.with_body(body)
        await self._set_all(key, in_bytes(entry), takers)

    def store(self, key: CacheKey, entry: CacheEntry) -> Deferred[None]:
        """
        Write an entry (body in memory) to every layer that takes it, in the background.

        :param key: the key.
        :param entry: the entry.
        :returns: fires when every layer is done (failures are logged and counted).
        """
        takers = [layer for layer in self.layers if entry.length <= layer.max_item_size]
        return self._track(Deferred.fromCoroutine(self._set_all(key, entry, takers)))

    def refresh(self, key: CacheKey, entry: CacheEntry, source: str) -> Deferred[None]:
        """
        Write a revalidated entry back: to every layer when its body is in memory, else (a
        disk body) only to the layer it came from.

        :param key: the key.
        :param entry: the refreshed entry.
        :param source: the layer it was read from.
        :returns: fires when done.
        """
        if isinstance(entry.body, FileBody):
            takers = [layer for layer in self.layers if layer.name == source]
            return self._track(Deferred.fromCoroutine(self._set_all(key, entry, takers)))
        return self.store(key, in_bytes(entry))

    async def _set_all(
        self, key: CacheKey, entry: CacheEntry, layers: Sequence[ICacheLayer]
    ) -> None:
        for layer in layers:
            started = self.reactor.seconds()
            try:
                await layer.set(key, entry)
            except Exception as e:
                self._failed(layer, "set", e)
            finally:
                if self.metrics is not None:
                    self.metrics.cache_set_time(layer.name, self.reactor.seconds() - started)

    def plan(self, key: CacheKey, length: int) -> WritePlan:
        """
        Decide how a body of ``length`` bytes will be stored, before reading it.

        :param key: the key.
        :param length: the body length (from ``Content-Length``).
        :returns: streaming writers for layers that stream (disk), and the layers that need
            the body buffered in memory (memory, Redis); both empty when nobody takes it.
        """
        plan = WritePlan()
        for layer in self.layers:
            if length > layer.max_item_size:
                continue
            try:
                writer = layer.open_writer(key)
            except Exception as e:
                self._failed(layer, "open a writer", e)
                continue
            if writer is not None:
                plan.writers.append(writer)
            else:
                plan.buffered.append(layer)
        return plan

    def store_in(
        self, key: CacheKey, entry: CacheEntry, layers: Sequence[ICacheLayer]
    ) -> Deferred[None]:
        """
        Write an entry to some layers in the background (see :meth:`plan`).

        :param key: the key.
        :param entry: the entry, body in memory.
        :param layers: where.
        :returns: fires when done (failures are logged and counted).
        """
        return self._track(Deferred.fromCoroutine(self._set_all(key, entry, layers)))

    async def delete(self, key: CacheKey) -> bool:
        """
        Remove an object from every layer; when a layer holds it as a sliced object's
        manifest, that layer's slices of it go too.

        :param key: the key.
        :returns: whether any layer had it.
        """
        found = False
        for layer in self.layers:
            try:
                found = await self._delete_in(layer, key) or found
            except CancelledError:
                raise
            except Exception as e:
                self._failed(layer, "delete", e)
        return found

    async def _delete_in(self, layer: ICacheLayer, key: CacheKey) -> bool:
        try:
            entry = await layer.get(key)
        except CancelledError:
            raise
        except Exception:
            entry = None  # the delete may still work; no manifest known, no slices named
        manifest = manifest_of(entry) if entry is not None else None
        found = bool(await layer.delete(key))
        if manifest is not None:
            for piece in manifest.keys(key):
                await layer.delete(piece)
        return found

    async def purge(self, bucket: str | None, prefix: str | None) -> int:
        """
        Remove entries from every layer.

        :param bucket: a bucket name, or ``None`` for everything.
        :param prefix: with a bucket, keys starting with it (``None``: the whole bucket).
        :returns: the largest count any layer removed (an object cached in several layers
            counts once).
        """
        removed = 0
        for layer in self.layers:
            try:
                removed = max(removed, int(await layer.purge(bucket, prefix)))
            except Exception as e:
                self._failed(layer, "purge", e)
        return removed

    def on_remote_purge(self, bucket: str | None, prefix: str | None, key: str | None) -> None:
        """
        Another instance purged: drop the same entries from this instance's private layers.

        :param bucket: ``None``: everything.
        :param prefix: with a bucket and no key, keys starting with it.
        :param key: with a bucket, one object key.
        """
        for layer in self.layers:
            if IPurgeBroadcaster.providedBy(layer):
                continue
            if bucket is not None and key is not None:
                self._track(Deferred.fromCoroutine(self._delete_in(layer, CacheKey(bucket, key))))
            else:
                self._track(layer.purge(bucket, prefix))

    @property
    def broadcasts_purges(self) -> bool:
        """Whether a shared layer (Redis) tells the other instances about purges."""
        return any(IPurgeBroadcaster.providedBy(layer) for layer in self.layers)

    def purge_subscribers(self) -> list[IService]:
        """
        :returns: a service per purge-broadcasting layer delivering other instances' purges
            to this cache (the layers' own services are theirs: ``layer.services()``).
        """
        return [
            layer.subscribe_purges(self.on_remote_purge)
            for layer in self.layers
            if IPurgeBroadcaster.providedBy(layer)
        ]

    def stats(self, bucket: str | None) -> tuple[LayerStats, dict[str, LayerStats]]:
        """
        :param bucket: a bucket name, or ``None`` for everything.
        :returns: the totals (request-level hits and misses; sizes summed over layers) and
            each layer's own counters.
        """
        per_layer = {layer.name: layer.stats(bucket) for layer in self.layers}
        hits = sum(n for (b, _), n in self.hits.items() if bucket is None or b == bucket)
        misses = sum(n for b, n in self.misses.items() if bucket is None or b == bucket)
        total = LayerStats(
            hits=hits,
            misses=misses,
            evictions=sum(s.evictions for s in per_layer.values()),
            current_size_bytes=sum(s.current_size_bytes for s in per_layer.values()),
            current_item_count=sum(s.current_item_count for s in per_layer.values()),
            max_size_bytes=sum(s.max_size_bytes for s in per_layer.values()),
        )
        return total, per_layer

    def slice_stats(self, bucket: str | None) -> dict[str, int]:
        """
        :param bucket: a bucket name, or ``None`` for everything.
        :returns: ``hits`` and ``misses`` of slice lookups (a sliced object's request looks up
            each slice it needs; a miss is a slice fetched from S3).
        """

        def total(counts: dict[str, int]) -> int:
            return sum(n for b, n in counts.items() if bucket is None or b == bucket)

        return {"hits": total(self.slice_hits), "misses": total(self.slice_misses)}

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if isinstance(result, BaseException) or hasattr(result, "value"):
                log.failure("background cache work failed", result)

        d.addBoth(done)
        return d

    def idle(self) -> Deferred[Any]:
        """:returns: fires when background writes and promotions are done (for shutdown)."""
        return DeferredList(list(self._pending), consumeErrors=True)

    async def close(self, keep: Collection[ICacheLayer] = ()) -> None:
        """
        Wait for background work, then close every layer but those kept.

        :param keep: layers a newer cache (a hot reload) took over: left open.
        """
        await self.idle()
        for layer in self.layers:
            if any(layer is kept for kept in keep):
                continue
            try:
                await layer.close()
            except Exception as e:
                self._failed(layer, "close", e)

"""
Prometheus metrics (prometheus-client), on a registry of our own, served at ``GET /metrics``.

Every metric of ours starts with ``yatagarasu_``; label values come from bounded sets (bucket
names from the configuration, layer names, methods, status codes) — never a path, a key or an
address. The standard ``process_`` and ``python_`` collectors are included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.web.server import Request

from yatagarasu.interfaces import ICacheLayer
from yatagarasu.web.responses import ReadOnlyResource

_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _LayerCollector(Collector):
    """Reads the layers' own counters at scrape time."""

    def __init__(self, layers: Callable[[], Sequence[ICacheLayer]], errors: dict[str, int]) -> None:
        self._layers = layers
        self._errors = errors

    def collect(self) -> Iterator[Any]:
        by_layer = ["layer"]
        evictions = CounterMetricFamily(
            "yatagarasu_cache_evictions",
            "Entries evicted to keep a layer's bound.",
            labels=by_layer,
        )
        size = GaugeMetricFamily(
            "yatagarasu_cache_size_bytes", "Bytes in a layer.", labels=by_layer
        )
        items = GaugeMetricFamily("yatagarasu_cache_items", "Entries in a layer.", labels=by_layer)
        errors = CounterMetricFamily(
            "yatagarasu_cache_errors",
            "Failed cache operations (served as misses).",
            labels=by_layer,
        )
        for layer in self._layers():
            stats = layer.stats(None)
            evictions.add_metric([layer.name], stats.evictions)
            size.add_metric([layer.name], stats.current_size_bytes)
            items.add_metric([layer.name], stats.current_item_count)
            own = int(getattr(layer, "errors", 0))
            errors.add_metric([layer.name], own + self._errors.get(layer.name, 0))
        yield from (evictions, size, items, errors)


class Metrics:
    """
    The proxy's metrics.

    :ivar registry: the registry ``/metrics`` renders.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "yatagarasu_requests", "Requests answered.", ["bucket", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "yatagarasu_request_duration_seconds",
            "Time from request to the end of the response.",
            ["bucket"],
            registry=r,
        )
        self.response_bytes = Counter(
            "yatagarasu_response_body_bytes", "Body bytes sent to clients.", ["bucket"], registry=r
        )
        self._hits = Counter(
            "yatagarasu_cache_hits", "Cache hits by layer.", ["bucket", "layer"], registry=r
        )
        self._misses = Counter("yatagarasu_cache_misses", "Cache misses.", ["bucket"], registry=r)
        self._get_seconds = Histogram(
            "yatagarasu_cache_get_duration_seconds",
            "Cache layer lookups.",
            ["layer"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self._set_seconds = Histogram(
            "yatagarasu_cache_set_duration_seconds",
            "Cache layer writes.",
            ["layer"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self._cache_errors: dict[str, int] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._layers: list[ICacheLayer] = []
        r.register(_LayerCollector(lambda: self._layers, self._cache_errors))

    def watch_layers(self, layers: Sequence[ICacheLayer]) -> None:
        """
        :param layers: cache layers whose size, items, evictions and errors to export.
        """
        self._layers = list(layers)

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() costs microseconds; the label sets are bounded, so the children are kept.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(
        self, bucket: str | None, method: str, status: int, seconds: float, sent: int
    ) -> None:
        """Count one finished request (``bucket`` ``None``: the proxy's own routes)."""
        label = bucket or "-"
        method = method if method in _METHODS else "other"
        self._child(self.requests, label, method, str(status)).inc()
        self._child(self.request_seconds, label).observe(seconds)
        if sent:
            self._child(self.response_bytes, label).inc(sent)

    def cache_hit(self, bucket: str, layer: str) -> None:
        """A lookup found the entry in ``layer``."""
        self._child(self._hits, bucket, layer).inc()

    def cache_miss(self, bucket: str) -> None:
        """A lookup found nothing in any layer."""
        self._child(self._misses, bucket).inc()

    def cache_error(self, layer: str) -> None:
        """A layer call failed (and was treated as a miss)."""
        self._cache_errors[layer] = self._cache_errors.get(layer, 0) + 1

    def cache_get_time(self, layer: str, seconds: float) -> None:
        """How long a layer lookup took."""
        self._child(self._get_seconds, layer).observe(seconds)

    def cache_set_time(self, layer: str, seconds: float) -> None:
        """How long a layer write took."""
        self._child(self._set_seconds, layer).observe(seconds)

    def render(self) -> bytes:
        """:returns: the Prometheus text exposition."""
        return generate_latest(self.registry)


class MetricsResource(ReadOnlyResource):
    """``GET /metrics``: rendered synchronously (a scrape takes well under a millisecond)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        body = self._metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

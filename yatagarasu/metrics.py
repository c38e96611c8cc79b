"""
Prometheus metrics (prometheus-client), on a registry of our own, served at ``GET /metrics``.

Every metric of ours starts with ``yatagarasu_``; label values come from bounded sets (bucket
names from the configuration, layer names, methods, status codes) — never a path, a key or an
address. The standard ``process_`` and ``python_`` collectors are included. With several
worker processes, :func:`merge_expositions` joins the workers' expositions into one. Every
metric is listed in docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from weakref import WeakSet

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import twisted
from yatagarasu import __version__
from yatagarasu.cache.tiered import TieredCache
from yatagarasu.interfaces import (
    IAuditSink,
    IErrorCountingCacheLayer,
    IRateLimiter,
    ISpoolingAuditSink,
)
from yatagarasu.s3.breaker import STATE_NUMBERS
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import Decision

#: prometheus-client's default buckets (request durations).
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_METHODS = {b"GET": "GET", b"HEAD": "HEAD", b"OPTIONS": "OPTIONS"}
#: the ``cache`` label of a request's ``X-Cache`` value (``none``: the bucket does not cache,
#: or the proxy's own routes)
_CACHE_LABELS: dict[bytes | None, str] = {
    None: "none",
    **{v: v.decode().lower() for v in (b"HIT", b"MISS", b"BYPASS", b"STALE", b"REVALIDATED")},
}


class _Counter:
    """A labelled counter: plain ``dict`` arithmetic on the request path, rendered on scrape."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.values: dict[tuple[Any, ...], float] = {}

    def inc(self, labels: tuple[Any, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in sorted(self.values.items(), key=_label_order):
            family.add_metric([str(v) for v in labels], value)
        return family


class _Histogram:
    """A labelled histogram with fixed buckets: one ``bisect`` and two additions per sample."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        bounds: Sequence[float],
        label_values: Callable[[tuple[Any, ...]], list[str]] = list,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.bounds = tuple(bounds)
        #: turns a series' key into its label values (when scraped, not per sample)
        self.label_values = label_values
        #: per label set: a count per bucket (the last one is +Inf), then the sum
        self.series: dict[tuple[Any, ...], list[float]] = {}

    def observe(self, labels: tuple[Any, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        for labels, series in sorted(self.series.items(), key=_label_order):
            cumulative, total = [], 0.0
            for edge, count in zip(edges, series[:-1], strict=True):
                total += count
                cumulative.append((edge, total))
            family.add_metric(self.label_values(labels), cumulative, sum_value=series[-1])
        return family


def _label_order(item: tuple[tuple[Any, ...], Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in item[0])


def _bucket_and_cache(key: tuple[Any, ...]) -> list[str]:
    """``(bucket, X-Cache value or None)`` → the ``bucket`` and ``cache`` label values."""
    bucket, cache = key
    return [bucket, _CACHE_LABELS.get(cache, "other")]


class _RequestCounter(_Counter):
    """
    ``yatagarasu_requests``: counted by ``(bucket, method, status code)``; the ``status_class``
    label (``2xx``...) is derived from the code when scraped, so it costs nothing per request.
    """

    def __init__(self) -> None:
        super().__init__(
            "yatagarasu_requests",
            "Requests answered, by bucket (- for the proxy's own routes), method, status code and"
            " status class.",
            ["bucket", "method", "status", "status_class"],
        )

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for (bucket, method, status), value in sorted(self.values.items(), key=_label_order):
            family.add_metric([bucket, method, str(status), f"{status // 100}xx"], value)
        return family


class _RequestPathCollector(Collector):
    """Renders the counters and histograms that the request path updates."""

    def __init__(self, metrics: Sequence[_Counter | _Histogram]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        for metric in self._metrics:
            yield metric.family()


class _GenerationCollector(Collector):
    """The configuration generation, as a gauge."""

    def __init__(self, generation: Callable[[], int]) -> None:
        self._generation = generation

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(
            "yatagarasu_config_generation",
            "The configuration generation served to new requests (1 at start-up).",
        )
        gauge.add_metric([], self._generation())
        yield gauge


class _BuildInfoCollector(Collector):
    """``yatagarasu_build_info``: 1, labelled with the versions running."""

    def __init__(self) -> None:
        self._labels = [__version__, platform.python_version(), twisted.__version__]

    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily(
            "yatagarasu_build_info",
            "Always 1; the labels say which yatagarasu, Python and Twisted run.",
            labels=["version", "python", "twisted"],
        )
        info.add_metric(self._labels, 1)
        yield info


class RequestSource(Protocol):
    """What :meth:`Metrics.watch_site` reads (a ``ProxySite``)."""

    @property
    def active_count(self) -> int:
        """Requests received and not yet finished."""

    @property
    def connection_count(self) -> int:
        """Client connections open."""


class _InFlightCollector(Collector):
    """Requests in flight and connections open, summed over the sites being watched."""

    def __init__(self, sites: Iterable[RequestSource]) -> None:
        self._sites = sites

    def collect(self) -> Iterator[Any]:
        sites = list(self._sites)
        requests = GaugeMetricFamily(
            "yatagarasu_requests_in_flight",
            "Requests received whose response has not ended yet (this scrape included).",
        )
        requests.add_metric([], sum(site.active_count for site in sites))
        connections = GaugeMetricFamily(
            "yatagarasu_connections_open", "Client connections open (idle keep-alive included)."
        )
        connections.add_metric([], sum(site.connection_count for site in sites))
        yield from (requests, connections)


class _CacheCollector(Collector):
    """Reads the tiered cache's and the layers' own counters at scrape time."""

    def __init__(self, cache: Callable[[], TieredCache | None], errors: dict[str, int]) -> None:
        self._cache = cache
        self._errors = errors

    def collect(self) -> Iterator[Any]:
        cache = self._cache()
        hits = CounterMetricFamily(
            "yatagarasu_cache_hits", "Cache hits by layer.", labels=["bucket", "layer"]
        )
        misses = CounterMetricFamily("yatagarasu_cache_misses", "Cache misses.", labels=["bucket"])
        if cache is not None:
            for (bucket, layer_name), count in sorted(cache.hits.items()):
                hits.add_metric([bucket, layer_name], count)
            for bucket, count in sorted(cache.misses.items()):
                misses.add_metric([bucket], count)
        yield from (hits, misses)
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
        for layer in cache.layers if cache is not None else ():
            stats = layer.stats(None)
            evictions.add_metric([layer.name], stats.evictions)
            size.add_metric([layer.name], stats.current_size_bytes)
            items.add_metric([layer.name], stats.current_item_count)
            own = int(layer.errors) if IErrorCountingCacheLayer.providedBy(layer) else 0
            errors.add_metric([layer.name], own + self._errors.get(layer.name, 0))
        yield from (evictions, size, items, errors)


class _AuditCollector(Collector):
    """Reads the audit sinks' own counters at scrape time."""

    def __init__(self, sinks: Callable[[], Sequence[IAuditSink]]) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator[Any]:
        records = CounterMetricFamily(
            "yatagarasu_audit_records",
            "Audit records by sink and result (written, failed, dropped).",
            labels=["sink", "result"],
        )
        by_sink = ["sink"]
        spool_files = GaugeMetricFamily(
            "yatagarasu_audit_spool_files",
            "Audit batches waiting in a local spool.",
            labels=by_sink,
        )
        spool_bytes = GaugeMetricFamily(
            "yatagarasu_audit_spool_bytes",
            "Bytes of audit batches in a local spool.",
            labels=by_sink,
        )
        failures = CounterMetricFamily(
            "yatagarasu_audit_upload_failures",
            "Failed uploads of spooled audit batches (each retry counts).",
            labels=by_sink,
        )
        for sink in self._sinks():
            for result, count in sorted(sink.counts.items()):
                records.add_metric([sink.name, result], count)
            if ISpoolingAuditSink.providedBy(sink):
                spool_files.add_metric([sink.name], sink.spool_files)
                spool_bytes.add_metric([sink.name], sink.spool_bytes)
                failures.add_metric([sink.name], sink.upload_failures)
        yield from (records, spool_files, spool_bytes, failures)


class _CircuitCollector(Collector):
    """Reads every replica's circuit breaker at scrape time."""

    def __init__(self, upstreams: Callable[[], Mapping[str, ReplicaSet]]) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(
            "yatagarasu_circuit_state",
            "Circuit breaker state of each replica: 0 closed, 1 open, 2 half-open.",
            labels=["bucket", "replica"],
        )
        for bucket, replicas in sorted(self._upstreams().items()):
            for replica in replicas.replicas:
                gauge.add_metric([bucket, replica.name], STATE_NUMBERS[replica.breaker.state])
        yield gauge


class _RateLimitCollector(Collector):
    """Reads the local rate limiter's per-scope tables at scrape time."""

    def __init__(self, stats: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        keys = GaugeMetricFamily(
            "yatagarasu_rate_limit_keys",
            "Client keys (addresses, users) the local rate limiter keeps, by scope.",
            labels=["scope"],
        )
        evictions = CounterMetricFamily(
            "yatagarasu_rate_limit_evictions",
            "Client keys forgotten because server.rate_limit.max_keys was reached, by scope"
            " (this configuration generation's).",
            labels=["scope"],
        )
        for scope, (kept, evicted) in sorted(self._stats().items()):
            keys.add_metric([scope], kept)
            evictions.add_metric([scope], evicted)
        yield from (keys, evictions)


class Metrics:
    """
    The proxy's metrics.

    Counted on every request, so kept as plain numbers (the reactor thread is the only
    writer) and turned into Prometheus families only when ``/metrics`` is scraped:
    prometheus-client's own ``Counter``/``Histogram`` take a lock and a label lookup per call,
    which cost more than the rest of a cached hit's bookkeeping.

    :ivar registry: the registry ``/metrics`` renders (ours, plus the standard ``process_``,
        ``python_`` and GC collectors).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._requests = _RequestCounter()
        self._request_seconds = _Histogram(
            "yatagarasu_request_duration_seconds",
            "Time from request to the end of the response, by bucket and cache status (X-Cache"
            " lowercased; none where nothing caches).",
            ["bucket", "cache"],
            _REQUEST_BUCKETS,
            _bucket_and_cache,
        )
        self._response_bytes = _Counter(
            "yatagarasu_response_body_bytes", "Body bytes sent to clients.", ["bucket"]
        )
        self._upstream = _Counter(
            "yatagarasu_upstream_requests",
            "Attempts sent to S3 (retries count each), by bucket and outcome: the status class"
            " answered, timeout, error (connect or connection failures) or cancelled.",
            ["bucket", "outcome"],
        )
        self._upstream_seconds = _Histogram(
            "yatagarasu_upstream_request_duration_seconds",
            "Time from sending one attempt to S3 to its response headers (or its failure).",
            ["bucket"],
            _REQUEST_BUCKETS,
        )
        self._auth = _Counter(
            "yatagarasu_auth_results",
            "Authentications on buckets with auth, by bucket and result (ok, missing: no"
            " credentials, invalid: bad token, forbidden: claims rules refused, error).",
            ["bucket", "result"],
        )
        self._get_seconds = _Histogram(
            "yatagarasu_cache_get_duration_seconds",
            "Cache layer lookups.",
            ["layer"],
            _FAST_BUCKETS,
        )
        self._set_seconds = _Histogram(
            "yatagarasu_cache_set_duration_seconds", "Cache layer writes.", ["layer"], _FAST_BUCKETS
        )
        self._reloads = _Counter(
            "yatagarasu_config_reloads",
            "Configuration reloads (SIGHUP, POST /admin/reload) by result (ok, error).",
            ["result"],
        )
        for result in ("ok", "error"):  # both series exist from the start
            self._reloads.inc((result,), 0)
        self._rate_limited = _Counter(
            "yatagarasu_rate_limited",
            "Requests refused (429) by a rate limit, by bucket and scope"
            " (global, per_ip, bucket, per_user).",
            ["bucket", "scope"],
        )
        self._rate_limit_unavailable = _Counter(
            "yatagarasu_rate_limit_backend_unavailable",
            "Requests decided by server.rate_limit.fail_mode because the shared rate-limit"
            " backend (Redis) could not answer, by outcome (allowed, refused).",
            ["outcome"],
        )
        self._failovers = _Counter(
            "yatagarasu_replica_failovers",
            "Requests that failed over from one replica to the next after a failure.",
            ["bucket", "from_replica", "to_replica"],
        )
        self._credentials = _Counter(
            "yatagarasu_credentials_refresh",
            "Fetches of temporary S3 credentials (first fetch, refresh before expiry, retry"
            " after a failure), by bucket, replica, source (env, profile, instance, ecs,"
            " web_identity) and result (ok, error).",
            ["bucket", "replica", "source", "result"],
        )
        self._authorizations = _Counter(
            "yatagarasu_authorization_decisions",
            "Authorization decisions by bucket, authorizer, result (allow, deny: the policy"
            " service answered; cached: an earlier answer reused; error: no answer, the fail"
            " mode decided) and decision (allow, deny).",
            ["bucket", "authorizer", "result", "decision"],
        )
        self._reactor_lag = _Histogram(
            "yatagarasu_reactor_lag_seconds",
            "How late a timer due every 0.05 s ran: time the reactor could not turn (full"
            " garbage collections, long callbacks, CPU starvation).",
            [],
            _LAG_BUCKETS,
        )
        self._cache_errors: dict[str, int] = {}
        self._cache: TieredCache | None = None
        #: the configuration generation being served (1 at start-up, +1 per applied reload)
        self.generation = 0
        self.registry.register(
            _RequestPathCollector(
                [
                    self._requests,
                    self._request_seconds,
                    self._response_bytes,
                    self._upstream,
                    self._upstream_seconds,
                    self._auth,
                    self._get_seconds,
                    self._set_seconds,
                    self._reloads,
                    self._rate_limited,
                    self._rate_limit_unavailable,
                    self._failovers,
                    self._authorizations,
                    self._credentials,
                    self._reactor_lag,
                ]
            )
        )
        self.registry.register(_GenerationCollector(lambda: self.generation))
        self.registry.register(_CacheCollector(lambda: self._cache, self._cache_errors))
        self._audit_sinks: Sequence[IAuditSink] = ()
        self.registry.register(_AuditCollector(lambda: self._audit_sinks))
        self._rate_limiter: IRateLimiter | None = None
        self.registry.register(
            _RateLimitCollector(
                lambda: self._rate_limiter.stats() if self._rate_limiter is not None else {}
            )
        )
        self._upstreams: Mapping[str, ReplicaSet] = {}
        self.registry.register(_CircuitCollector(lambda: self._upstreams))
        self.registry.register(_BuildInfoCollector())
        self._sites: WeakSet[Any] = WeakSet()
        self.registry.register(_InFlightCollector(self._sites))

    def watch_site(self, site: RequestSource) -> None:
        """
        :param site: a site whose requests in flight and open connections to export (held
            weakly: the sites a reload built and never listened on go away with it).
        """
        self._sites.add(site)

    def watch_cache(self, cache: TieredCache | None) -> None:
        """
        :param cache: the cache whose hits and misses, and whose layers' size, items,
            evictions and errors to export (``None``: no cache any more, after a reload).
        """
        self._cache = cache

    def watch_rate_limiter(self, limiter: IRateLimiter | None) -> None:
        """:param limiter: the rate limiter whose tables to export (``None``: none any more)."""
        self._rate_limiter = limiter

    def watch_audit(self, sinks: Sequence[IAuditSink]) -> None:
        """:param sinks: the audit sinks whose record counts to export."""
        self._audit_sinks = sinks

    def watch_upstreams(self, upstreams: Mapping[str, ReplicaSet]) -> None:
        """:param upstreams: the replica sets whose circuit states to export, by bucket."""
        self._upstreams = upstreams

    def credentials_fetched(self, bucket: str, replica: str, source: str, result: str) -> None:
        """Count one fetch of an upstream's credentials (``result``: ``ok`` or ``error``)."""
        self._credentials.inc((bucket, replica, source, result))

    def failover(self, bucket: str, source: str, target: str) -> None:
        """Count one failover of a request from replica ``source`` to ``target``."""
        self._failovers.inc((bucket, source, target))

    def request(
        self,
        bucket: str | None,
        method: bytes,
        status: int,
        seconds: float,
        sent: int,
        cache: bytes | None = None,
    ) -> None:
        """
        Count one finished request.

        :param bucket: its bucket (``None``: the proxy's own routes).
        :param method: its method.
        :param status: the status sent.
        :param seconds: from its arrival to the end of the response.
        :param sent: body bytes sent.
        :param cache: the ``X-Cache`` value sent (``b"HIT"``...; ``None``: nothing caches).
        """
        label = bucket or "-"
        self._requests.inc((label, _METHODS.get(method, "other"), status))
        self._request_seconds.observe((label, cache), seconds)
        if sent:
            self._response_bytes.inc((label,), sent)

    def rate_limited(self, bucket: str, scope: str) -> None:
        """Count one request refused by a rate limit (``scope``: one of ``RATE_SCOPES``)."""
        self._rate_limited.inc((bucket, scope))

    def rate_limit_unavailable(self, allowed: bool) -> None:
        """Count one request the fail mode decided (the shared backend could not answer)."""
        self._rate_limit_unavailable.inc(("allowed" if allowed else "refused",))

    def upstream(self, bucket: str, outcome: str, seconds: float) -> None:
        """
        Count one attempt sent to S3.

        :param bucket: the bucket's name.
        :param outcome: ``2xx``, ``3xx``, ``4xx``, ``5xx``, ``timeout``, ``error`` or
            ``cancelled`` (:class:`yatagarasu.s3.client.S3Client` decides).
        :param seconds: from sending it to its response headers (or its failure).
        """
        self._upstream.inc((bucket, outcome))
        self._upstream_seconds.observe((bucket,), seconds)

    def auth_result(self, bucket: str, result: str) -> None:
        """
        Count one authentication.

        :param bucket: the bucket's name.
        :param result: ``ok``, ``missing``, ``invalid``, ``forbidden`` or ``error``.
        """
        self._auth.inc((bucket, result))

    def reactor_lag(self, seconds: float) -> None:
        """Note how late the reactor ran a timer (:mod:`yatagarasu.observability.reactor_lag`)."""
        self._reactor_lag.observe((), seconds)

    def config_reload(self, result: str) -> None:
        """Count one reload attempt (``result``: ``ok`` or ``error``)."""
        self._reloads.inc((result,))

    def authorization(self, bucket: str, authorizer: str, decision: Decision) -> None:
        """
        Count one authorization decision.

        :param bucket: the bucket name.
        :param authorizer: the authorizer's type (``opa``).
        :param decision: what it decided; its ``result`` is a bounded label.
        """
        verdict = "allow" if decision.allowed else "deny"
        self._authorizations.inc((bucket, authorizer, decision.result, verdict))

    def cache_error(self, layer: str) -> None:
        """A layer call failed (and was treated as a miss)."""
        self._cache_errors[layer] = self._cache_errors.get(layer, 0) + 1

    def cache_get_time(self, layer: str, seconds: float) -> None:
        """How long a layer lookup took."""
        self._get_seconds.observe((layer,), seconds)

    def cache_set_time(self, layer: str, seconds: float) -> None:
        """How long a layer write took."""
        self._set_seconds.observe((layer,), seconds)

    def render(self) -> bytes:
        """:returns: the Prometheus text exposition."""
        return generate_latest(self.registry)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_expositions(parts: Mapping[int, str]) -> bytes:
    """
    One exposition for several worker processes: every sample of every worker, labelled
    ``worker="N"`` (a bounded label: ``server.workers`` is at most 64).

    :param parts: each worker's own exposition (:meth:`Metrics.render`), by worker number.
    :returns: the merged Prometheus text exposition.
    """
    families: dict[str, Metric] = {}
    for worker, text in sorted(parts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type)
                families[family.name] = merged
            label = str(worker)
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "worker": label})
                for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)

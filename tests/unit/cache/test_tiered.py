"""
The tiered cache (yatagarasu.cache.tiered): immediate layers answer at once, misses go down, hits
are promoted, failures are misses.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from yatagarasu_dictlayer import DictLayer

from tests.unit.tiered_harness import memory
from yatagarasu.cache.memory import MAPPED_BODY_MIN, MemoryCacheLayer, MemoryCacheSettings
from yatagarasu.cache.slicing import manifest_entry, manifest_of
from yatagarasu.cache.tiered import Lookup, TieredCache
from yatagarasu.metrics import Metrics
from yatagarasu.testing import FAR_FUTURE
from yatagarasu.testing import sample_entry as entry
from yatagarasu.values import CacheEntry, CacheKey, MappedBody

KEY = CacheKey("pub", "k")


def test_a_memory_hit_and_an_all_memory_miss_come_back_as_values() -> None:
    clock = Clock()
    layer = memory(clock)
    cache = TieredCache([layer], clock)
    assert cache.lookup(KEY) is None
    layer.store(KEY, entry(b"v", retain_until=FAR_FUTURE))
    found = cache.lookup(KEY)
    assert isinstance(found, Lookup) and found.entry.body == b"v" and found.layer == "memory"
    assert (cache.hits, cache.misses) == ({("pub", "memory"): 1}, {"pub": 1})
    got: list[Any] = []
    cache.get(KEY).addCallback(got.append)  # get() stays a Deferred
    assert got[0].entry.body == b"v"


def test_after_a_memory_miss_the_next_layer_is_asked_once_and_its_hit_promoted() -> None:
    clock = Clock()
    fast, slow = memory(clock), DictLayer(10, 1 << 16, clock)
    slow._entries[KEY] = entry(b"from-dict", retain_until=FAR_FUTURE)
    cache = TieredCache([fast, slow], clock)
    found = cache.lookup(KEY)
    assert isinstance(found, Deferred)
    got: list[Any] = []
    found.addCallback(got.append)
    assert got[0].layer == "dict"
    assert (fast.stats(None).misses, slow.stats(None).hits) == (1, 1)
    again = cache.lookup(KEY)  # promoted into memory meanwhile
    assert isinstance(again, Lookup) and again.layer == "memory"
    assert cache.hits == {("pub", "dict"): 1, ("pub", "memory"): 1}


def test_a_layer_that_is_not_immediate_is_asked_through_its_deferred() -> None:
    clock = Clock()
    slow = DictLayer(10, 1 << 16, clock)
    cache = TieredCache([slow], clock)
    found = cache.lookup(KEY)
    assert isinstance(found, Deferred)
    got: list[Any] = []
    found.addCallback(got.append)
    assert got == [None] and cache.misses == {"pub": 1}


class Broken(MemoryCacheLayer):
    def lookup(self, key: CacheKey) -> CacheEntry | None:
        raise OSError("broken")


class Pending(DictLayer):
    def __init__(self, clock: Any) -> None:
        super().__init__(10, 1 << 16, clock)
        self.waiting: list[Deferred[CacheEntry | None]] = []

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        d: Deferred[CacheEntry | None] = Deferred()
        self.waiting.append(d)
        return d


def test_a_failing_immediate_layer_is_a_counted_miss() -> None:
    clock = Clock()
    metrics = Metrics()
    broken = Broken(MemoryCacheSettings(), clock)
    cache = TieredCache([broken], clock, metrics)
    metrics.watch_cache(cache)
    assert cache.lookup(KEY) is None
    assert "yatagarasu_cache_errors_total" in metrics.render().decode()
    assert metrics._cache_errors == {"memory": 1}


def test_a_failed_or_pending_slower_layer_is_handled_like_before() -> None:
    clock = Clock()
    pending = Pending(clock)
    cache = TieredCache([memory(clock), pending], clock)
    found = cache.lookup(KEY)
    assert isinstance(found, Deferred) and not found.called
    pending.waiting[0].errback(OSError("down"))
    got: list[Any] = []
    found.addCallback(got.append)
    assert got == [None] and cache.misses == {"pub": 1}
    cancelled = cache.lookup(KEY)
    assert isinstance(cancelled, Deferred)
    errors: list[Any] = []
    cancelled.addErrback(errors.append)
    cancelled.cancel()
    assert len(errors) == 1 and cache.misses == {"pub": 1}  # a cancel is not a miss


def test_failures_of_slower_layers_go_on_to_the_next_layer() -> None:
    clock = Clock()
    tail = DictLayer(10, 1 << 16, clock)
    tail._entries[KEY] = entry(b"tail", retain_until=FAR_FUTURE)

    class Failing(DictLayer):
        def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
            return fail(OSError("nope"))

    cache = TieredCache([Failing(10, 1 << 16, clock), tail], clock)
    got: list[Any] = []
    cache.get(KEY).addCallback(got.append)
    assert got[0].entry.body == b"tail"


def test_each_layer_answer_is_a_child_span_of_the_lookup_stage() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from yatagarasu.observability.timings import CACHE_LOOKUP, RequestTimings

    clock = Clock()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    timings = RequestTimings(clock, 0.0, tracer, tracer.start_span("GET", start_time=0))
    pending = Pending(clock)
    tail = DictLayer(10, 1 << 16, clock)
    tail._entries[KEY] = entry(b"tail", retain_until=FAR_FUTURE)
    cache = TieredCache([memory(clock), pending, tail], clock)
    stage = timings.begin(CACHE_LOOKUP, "cache.lookup")
    found = cache.lookup(KEY, stage)
    assert isinstance(found, Deferred)
    clock.advance(0.25)
    pending.waiting[0].errback(OSError("down"))
    got: list[Any] = []
    found.addCallback(got.append)
    assert got[0].layer == "dict"
    stage.end()
    spans = exporter.get_finished_spans()
    # memory answered at once; the pending layer failed after 250 ms (a counted miss), the
    # last one had it; then the lookup stage ended
    assert [(span.name, dict(span.attributes or {})) for span in spans] == [
        ("cache.get memory", {"yatagarasu.cache.layer": "memory", "yatagarasu.cache.hit": False}),
        (
            "cache.get dict",
            {
                "yatagarasu.cache.layer": "dict",
                "yatagarasu.cache.hit": False,
                "error.type": "OSError",
            },
        ),
        ("cache.get dict", {"yatagarasu.cache.layer": "dict", "yatagarasu.cache.hit": True}),
        ("cache.lookup", {}),
    ]
    assert [span.end_time for span in spans] == [0, 250_000_000, 250_000_000, 250_000_000]
    assert spans[1].start_time == 0
    assert {span.parent.span_id for span in spans[:3] if span.parent} == {spans[3].context.span_id}
    assert timings.seconds(CACHE_LOOKUP) == 0.25


def test_deleting_a_sliced_object_deletes_the_slices_its_manifest_names() -> None:
    clock = Clock()
    fast, slow = memory(clock), DictLayer(10, 1 << 16, clock)
    cache = TieredCache([fast, slow], clock)
    sliced = manifest_entry(((b"etag", b'"v1"'),), 25, 10, 0.0, 1.0, FAR_FUTURE, False)
    manifest = manifest_of(sliced)
    assert manifest is not None
    pieces = list(manifest.keys(KEY))
    other = CacheKey("pub", "k", pieces[0].variant.replace(":0", ":9"))  # not named by it
    fast.store(KEY, sliced)
    slow._entries[KEY] = sliced
    for piece in [*pieces, other]:
        fast.store(piece, entry(b"s", retain_until=FAR_FUTURE))
        slow._entries[piece] = entry(b"s", retain_until=FAR_FUTURE)
    done: list[bool] = []
    Deferred.fromCoroutine(cache.delete(KEY)).addCallback(done.append)
    assert done == [True]
    assert all(fast.lookup(k) is None for k in [KEY, *pieces])
    assert all(k not in slow._entries for k in [KEY, *pieces])
    assert fast.lookup(other) is not None and other in slow._entries
    # another instance's purge of the key does the same in this one's private layers
    fast.store(KEY, sliced)
    fast.store(pieces[1], entry(b"s", retain_until=FAR_FUTURE))
    cache.on_remote_purge("pub", None, "k")
    assert fast.lookup(KEY) is None and fast.lookup(pieces[1]) is None
    # slice lookups are counted apart from request-level hits and misses
    cache.lookup(pieces[1])
    cache.lookup(other)
    assert cache.slice_stats("pub") == {"hits": 1, "misses": 1}


def test_other_layers_are_given_a_memory_file_body_as_bytes() -> None:
    """A revalidated memory entry, and a memory hit promoted into a layer above it."""
    clock = Clock()
    fast, dict_layer = memory(clock), DictLayer(10, 1 << 20, clock)
    data = b"m" * MAPPED_BODY_MIN
    fast.store(KEY, entry(data, retain_until=FAR_FUTURE))
    found = fast.lookup(KEY)
    assert found is not None and isinstance(found.body, MappedBody)
    TieredCache([fast, dict_layer], clock).refresh(KEY, found, "memory")
    given = dict_layer._entries[KEY].body
    assert given == data and isinstance(given, bytes)
    again = fast.lookup(KEY)
    assert again is not None and isinstance(again.body, MappedBody) and again.body.read() == data
    above = DictLayer(10, 1 << 20, clock)
    got: list[Any] = []
    TieredCache([above, fast], clock).lookup(KEY).addCallback(got.append)  # type: ignore[union-attr]
    assert got[0].layer == "memory"
    assert above._entries[KEY].body == data and isinstance(above._entries[KEY].body, bytes)

"""
Cache policy benchmark: miss ratio (upstream GETs / requests) of the memory layer's
W-TinyLFU policy against plain LRU and the size-aware static optimum, on a seeded Zipf trace,
with and without scans of cold objects; plus ns per hit and per set on the layer.

Not run in CI. Standalone::

    .venv/bin/python bench/cache_policy.py [--requests 500000] [--seed 20261125]

Prints markdown tables (for docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from twisted.internet.task import Clock

from yatagarasu.cache.memory import MemoryCacheLayer, MemoryCacheSettings
from yatagarasu.values import MIB, CacheEntry, CacheKey

KIB = 1024
N_OBJECTS = 10_000
HEADERS = ((b"content-type", b"application/octet-stream"), (b"etag", b'"0123456789abcdef"'))
FAR = 4_000_000_000.0


def entry_cost(size: int) -> int:
    """Bytes an entry with a ``size``-byte body costs (what the layer counts)."""
    return CacheEntry(HEADERS, b"", 0.0, FAR, FAR).size + size


def make_trace(
    n_requests: int, seed: int, scan_every: int = 0, scan_length: int = 0
) -> tuple[list[int], list[int]]:
    """
    :returns: (object sizes in bytes, request sequence of object ids). Objects 0..9999 are
        Zipf(1.0)-popular (rank shuffled against id); with scans, every ``scan_every``
        requests ``scan_length`` never-seen-again objects (ids from 10000 up) are requested
        once each.
    """
    rng = random.Random(seed)
    sizes = [rng.randint(1 * KIB, 100 * KIB) for _ in range(N_OBJECTS)]
    ranked = list(range(N_OBJECTS))
    rng.shuffle(ranked)
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(N_OBJECTS)))
    requests = rng.choices(ranked, cum_weights=cumulative, k=n_requests)
    if not scan_every:
        return sizes, requests
    out: list[int] = []
    next_id = N_OBJECTS
    for start in range(0, n_requests, scan_every):
        out.extend(requests[start : start + scan_every])
        for _ in range(scan_length):
            sizes.append(rng.randint(1 * KIB, 100 * KIB))
            out.append(next_id)
            next_id += 1
    return sizes, out


def run_layer(sizes: Sequence[int], requests: Sequence[int], capacity: int) -> int:
    """Drive the real memory layer (lookup → miss → store). :returns: misses."""
    settings = MemoryCacheSettings(max_cache_size_mb=capacity / MIB, max_item_size_mb=1.0)
    layer = MemoryCacheLayer(settings, Clock())
    keys = [CacheKey("bench", f"objects/{i:06d}.bin") for i in range(len(sizes))]
    misses = 0
    lookup = layer.lookup
    store = layer.store
    for obj in requests:
        key = keys[obj]
        if lookup(key) is None:
            misses += 1
            store(key, CacheEntry(HEADERS, bytes(sizes[obj]), 0.0, FAR, FAR))
            assert layer.size <= layer.max_size
    return misses


def run_lru(sizes: Sequence[int], requests: Sequence[int], capacity: int) -> int:
    """Plain byte-bounded LRU with the same entry costs. :returns: misses."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = 0
    misses = 0
    costs = [entry_cost(s) for s in sizes]
    for obj in requests:
        if obj in cache:
            cache.move_to_end(obj)
            continue
        misses += 1
        cost = costs[obj]
        while used + cost > capacity and cache:
            _, old = cache.popitem(last=False)
            used -= old
        cache[obj] = cost
        used += cost
    return misses


def run_static_optimum(sizes: Sequence[int], requests: Sequence[int], capacity: int) -> int:
    """
    Size-aware static optimum (reference bound): knowing every object's request count in
    advance, keep the objects with the most requests per byte (greedy fill), and count every
    request to them as a hit. :returns: misses.
    """
    counts: dict[int, int] = {}
    for obj in requests:
        counts[obj] = counts.get(obj, 0) + 1
    costs = [entry_cost(s) for s in sizes]
    used = 0
    kept = 0
    for obj in sorted(counts, key=lambda o: counts[o] / costs[o], reverse=True):
        if used + costs[obj] <= capacity:
            used += costs[obj]
            kept += counts[obj]
    return len(requests) - kept


def micro(capacity_mb: float, n: int = 200_000) -> dict[str, float]:
    """:returns: ns per operation for the hit path and the set path."""
    settings = MemoryCacheSettings(max_cache_size_mb=capacity_mb, max_item_size_mb=1.0)
    layer = MemoryCacheLayer(settings, Clock())
    hot = [CacheKey("bench", f"hot/{i}") for i in range(1000)]
    for key in hot:
        layer.lookup(key)
        layer.store(key, CacheEntry(HEADERS, bytes(1024), 0.0, FAR, FAR))
    for key in hot:  # promote to protected
        layer.lookup(key)
    probe = [CacheKey("bench", f"hot/{i % 1000}") for i in range(n)]  # fresh key objects
    results: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], None], count: int, repeat: int = 5) -> None:
        best = None
        for _ in range(repeat):
            start = time.perf_counter_ns()
            fn()
            elapsed = time.perf_counter_ns() - start
            best = elapsed if best is None else min(best, elapsed)
        assert best is not None
        results[label] = best / count

    def hits_lookup() -> None:
        lookup = layer.lookup
        for key in probe:
            lookup(key)

    def hits_get() -> None:
        get = layer.get
        for key in probe:
            get(key)

    timed("hit, lookup() (sync)", hits_lookup, n)
    timed("hit, get() (Deferred)", hits_get, n)

    body = bytes(1024)
    new_entries = [CacheEntry(HEADERS, body, 0.0, FAR, FAR) for _ in range(n)]
    new_keys = [CacheKey("bench", f"new/{i}") for i in range(n)]
    full = MemoryCacheLayer(
        MemoryCacheSettings(max_cache_size_mb=16 * entry_cost(1024) * 1000 / MIB), Clock()
    )

    def sets_new() -> None:
        store = full.store
        for key, entry in zip(new_keys, new_entries, strict=True):
            store(key, entry)

    timed("set, new key into a full cache", sets_new, n, repeat=1)

    def sets_replace() -> None:
        set_ = layer.set
        entry = new_entries[0]
        for key in probe:
            set_(key, entry)

    timed("set() (Deferred), replace", sets_replace, n)

    def misses_get() -> None:
        get = layer.get
        for key in new_keys:
            get(key)

    timed("miss, get() (Deferred)", misses_get, n, repeat=1)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # The frequency sketch indexes by hash(): fix str hashing so runs are repeatable.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--scan-every", type=int, default=50_000)
    parser.add_argument("--scan-length", type=int, default=2_000)
    args = parser.parse_args(argv)
    n_requests = min(args.requests, 2_000_000)

    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# Cache policy benchmark ({python})")
    print()
    sizes, requests = make_trace(n_requests, args.seed)
    total = sum(entry_cost(s) for s in sizes[:N_OBJECTS])
    print(
        f"Trace: Zipf(1.0) over {N_OBJECTS:,} objects, sizes uniform 1-100 KiB "
        f"(total {total / MIB:.0f} MiB), {len(requests):,} requests, seed {args.seed}."
    )
    print()
    print("## Miss ratio (upstream GETs / requests), lower is better")
    print()
    compulsory = len(set(requests)) / len(requests)
    print(
        f"Every dynamic policy also pays the first request of each object ({compulsory:.1%} of "
        "requests here); the static optimum does not."
    )
    print()
    print("| cache size | W-TinyLFU (memory layer) | plain LRU | size-aware static optimum |")
    print("|---|---|---|---|")
    for share in (0.10, 0.20, 0.50):
        capacity = int(total * share)
        row = [
            run(sizes, requests, capacity) / len(requests)
            for run in (run_layer, run_lru, run_static_optimum)
        ]
        cells = " | ".join(f"{value:.1%}" for value in row)
        print(f"| {share:.0%} of bytes ({capacity / MIB:.0f} MiB) | {cells} |")
        sys.stdout.flush()
    print()

    sizes, requests = make_trace(n_requests, args.seed, args.scan_every, args.scan_length)
    print(
        f"## With scans: every {args.scan_every:,} requests, {args.scan_length:,} cold objects "
        f"requested once ({len(requests):,} requests); hit ratio, higher is better"
    )
    print()
    print("| cache size | W-TinyLFU (memory layer) | plain LRU | difference |")
    print("|---|---|---|---|")
    for share in (0.10, 0.20, 0.50):
        capacity = int(total * share)
        ours = 1 - run_layer(sizes, requests, capacity) / len(requests)
        lru = 1 - run_lru(sizes, requests, capacity) / len(requests)
        print(
            f"| {share:.0%} of bytes ({capacity / MIB:.0f} MiB) | {ours:.1%} | {lru:.1%} | "
            f"{(ours - lru) * 100:+.1f} points |"
        )
        sys.stdout.flush()
    print()

    print("## Layer operations (1 KiB entries, 1,000 hot keys, fresh CacheKey objects; best of 5)")
    print()
    print("| operation | ns/op |")
    print("|---|---|")
    for label, ns in micro(64.0).items():
        print(f"| {label} | {ns:,.0f} |")


if __name__ == "__main__":
    main()

"""
How long a full garbage collection stops the reactor as the memory layer fills: Python's
cycle collector walks every object it tracks, and each cached entry brings some. For each
``--entries`` count, a ``MemoryCacheLayer`` (no reactor; ``Clock``) gets that many entries of
``--body-bytes`` (each one hit once, so its ``head_lines`` are made, as on a real hit), then
prints the objects the collector tracks per entry and the median time of ``--collections``
full ``gc.collect()`` calls. Run it alone on the machine::

    .venv/bin/python bench/gc_pause.py
    .venv/bin/python bench/gc_pause.py --entries 10000,100000,300000 --body-bytes 1024
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from twisted.internet.task import Clock

from yatagarasu.cache.memory import MemoryCacheLayer, MemoryCacheSettings
from yatagarasu.values import CacheEntry, CacheKey

HEADERS = (
    (b"content-type", b"application/octet-stream"),
    (b"etag", b'"0123456789abcdef0123456789abcdef"'),
    (b"last-modified", b"Tue, 01 Dec 2026 00:00:00 GMT"),
)


def measure(entries: int, body_bytes: int, collections: int) -> tuple[float, float]:
    """:returns: tracked objects per entry, and the median full collection in ms."""
    settings = MemoryCacheSettings(max_cache_size_mb=1 << 20, max_item_size_mb=64)
    layer = MemoryCacheLayer(settings, Clock())
    gc.collect()
    before = len(gc.get_objects())
    for i in range(entries):
        key = CacheKey("bench", f"objects/{i:08d}.bin")
        layer.store(key, CacheEntry(HEADERS, bytes(body_bytes), 0.0, 1e12, 1e12))
        hit = layer.lookup(key)
        assert hit is not None
        hit.head_lines  # noqa: B018 (made on the first hit and kept with the entry)
    gc.collect()
    per_entry = (len(gc.get_objects()) - before) / entries
    times = []
    for _ in range(collections):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    layer.close()
    return per_entry, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", default="10000,100000,300000")
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--collections", type=int, default=3)
    a = parser.parse_args()
    print("| entries | body | tracked objects per entry | full collection | per 1,000 entries |")
    print("|---:|---:|---:|---:|---:|")
    for entries in (int(n) for n in a.entries.split(",")):
        per_entry, ms = measure(entries, a.body_bytes, a.collections)
        print(
            f"| {entries:,} | {a.body_bytes} B | {per_entry:.1f} | {ms:.1f} ms"
            f" | {ms / entries * 1000:.2f} ms |"
        )


if __name__ == "__main__":
    main()

"""
What one ``malloc_trim(0)`` (``yatagarasu/heap.py``'s trim, every 5 s) costs the reactor on a
large, fragmented heap: the worst case of a memory layer full of small bodies (under 64 KiB
they stay ``bytes`` in the heap) with half of them evicted.

The heap gets ``--objects`` bodies of 4-64 KiB (random sizes, seeded), with ``heap.py``'s
thresholds; every other one, picked at random, is freed; then ``--trims`` trims are timed one
after the other. The first gives back the freed pages; the later ones find them given back
already and show the steady cost. Run it alone on the machine::

    .venv/bin/python bench/trim_cost.py
    .venv/bin/python bench/trim_cost.py --objects 40000 --trims 5
"""

from __future__ import annotations

import argparse
import ctypes
import random
import time

from yatagarasu.heap import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20000, help="bodies of 4-64 KiB")
    parser.add_argument("--trims", type=int, default=3)
    args = parser.parse_args()
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    rng = random.Random(1)
    bodies: list[bytes | None] = [
        b"x" * rng.randint(4096, 65535) for _ in range(max(1, args.objects))
    ]
    held = sum(len(b) for b in bodies if b is not None)
    for i in rng.sample(range(len(bodies)), len(bodies) // 2):
        bodies[i] = None
    kept = sum(len(b) for b in bodies if b is not None)
    print(f"heap: {held >> 20} MiB of bodies, {(held - kept) >> 20} MiB of them freed")
    for k in range(max(1, min(args.trims, 100))):
        started = time.perf_counter()
        gave_back = libc.malloc_trim(0)
        took = time.perf_counter() - started
        print(f"trim {k}: {1000 * took:.1f} ms (gave memory back: {bool(gave_back)})")


if __name__ == "__main__":
    main()

"""CPU per request of 1 KiB memory-cache hits through the real ``ProxySite`` on an in-memory
transport (no sockets, no wrk): the request path's own cost, far less disturbed by other jobs
on a shared machine than a wrk run. Compares observability settings and, with
``--before-root``, another checkout (the code before a change).

Variants (each a fresh child process, alternating, ``--rounds`` times):

* ``none``     -- no ``observability`` section
* ``disabled`` -- ``observability.tracing.enabled: false``
* ``on``       -- ``observability.tracing: {enabled: true, exporter: none}`` (the spans are made,
  nothing exports them: the cost of making them)
* ``before``   -- ``none`` with the code of ``--before-root`` (its own ``.venv``)

Each child serves ``--requests`` hits ``--reps`` times and reports the fastest repetition's
``time.process_time`` per request.  Example::

    .venv/bin/python bench/hit_cpu.py --before-root /work/main
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OBSERVABILITY = {
    "none": None,
    "before": None,
    "disabled": {"tracing": {"enabled": False}},
    "on": {"tracing": {"enabled": True, "exporter": "none"}},
}


def child(root: str, variant: str, requests: int, reps: int) -> None:
    """Run in the child: serve the hits, print the best µs per request."""
    sys.path.insert(0, root)
    from tests.unit.fakes import FakeResponse, Harness, bucket_entry

    document: dict[str, object] = {
        "buckets": [bucket_entry()],
        "logging": {"level": "warn"},
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}},
    }
    if OBSERVABILITY[variant] is not None:
        document["observability"] = OBSERVABILITY[variant]
    h = Harness(document)
    h.clock.advance(1_800_000_000)
    raw = b"GET /pub/k HTTP/1.1\r\nHost: proxy\r\n\r\n"
    channel, transport = h.connect()
    channel.dataReceived(raw)
    answer = FakeResponse(200, {"Cache-Control": "max-age=100000"}, body=b"x" * 1024)
    h.agents["pub"].answer(answer)
    if b"X-Cache: MISS" not in transport.value():
        raise SystemExit("the first request was not a miss")
    best = float("inf")
    for _ in range(reps):
        transport.clear()
        started = time.process_time()
        for _ in range(requests):
            channel.dataReceived(raw)
            if len(transport.io.getvalue()) > 1 << 20:
                transport.clear()
        best = min(best, (time.process_time() - started) / requests * 1e6)
    if b"X-Cache: HIT" not in transport.value():
        raise SystemExit("the hits were not hits")
    print(f"{best:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--before-root", help="another checkout (with its .venv)")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "VARIANT"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.requests, a.reps)
        return
    variants = ["none", "disabled", "on"] + (["before"] if a.before_root else [])
    results: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(a.rounds):
        for variant in variants if i % 2 == 0 else reversed(variants):
            root = Path(a.before_root) if variant == "before" else REPO
            python = root / ".venv" / "bin" / "python"
            argv = [str(python), str(REPO / "bench" / "hit_cpu.py"), "--child", str(root), variant]
            argv += ["--requests", str(a.requests), "--reps", str(a.reps)]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
            results[variant].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {i + 1} {variant}: {results[variant][-1]:.2f} µs/req", flush=True)
    base = statistics.median(results["none"])
    print("\n| variant | µs/req (median of rounds) | min | vs none |\n|---|---|---|---|")
    for variant in variants:
        median = statistics.median(results[variant])
        print(
            f"| {variant} | {median:.1f} | {min(results[variant]):.1f} |"
            f" {(median / base - 1) * 100:+.1f} % |"
        )


if __name__ == "__main__":
    main()

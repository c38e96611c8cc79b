"""Sliced caching benchmark: a sliced object served from memory slices vs an unsliced BYPASS
stream of the same object, and the slice sizes side by side.

Targets (each its own twistd process on 127.0.0.1, in front of ``bench/origin.py``'s nginx
with an access log, so upstream GETs are counted):

* ``bypass``   -- ``slice_size_mb: 0``: the object is above the item cap, streamed from the
  origin every time (``X-Cache: BYPASS``)
* ``slice-N``  -- ``slice_size_mb: N`` (1, 2, 4, 8): the object is cached as N MiB slices in
  the memory layer (warmed by one full GET, which cuts it into slices)

Scenarios: full GETs of the object with curl (MiB/s, median of ``--runs``), wrk with random
256 KiB ranges (a Lua script, seeded; req/s and MiB/s), and, for the sliced targets, a cold
pass of 64 random ranges on a fresh object (origin GETs counted: one per slice touched).

Raw output goes to ``bench/results/slices-<UTC stamp>/`` (git-ignored); the markdown table
is printed and saved there as ``results.md``.  Examples::

    .venv/bin/python bench/slices_bench.py                     # ~3 min
    .venv/bin/python bench/slices_bench.py --seconds 2 --runs 1 --sizes 4   # smoke test
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import dump, machine_facts, median, run_curl, set_pinning
from proxylib import (
    LoggedOrigin,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    log,
    md_table,
    results_dir,
    run_wrk,
    start_proxy,
)

from devharness.ports import free_port

MIB = 1024 * 1024
OBJECT_SIZE = 64 * MIB
RANGE_SIZE = 256 * 1024

RANGES_LUA = """\
math.randomseed({seed})
request = function()
  local first = math.random(0, {size} - {length})
  local headers = {{}}
  headers["Range"] = "bytes=" .. first .. "-" .. (first + {length} - 1)
  return wrk.format("GET", "{path}", headers)
end
"""


def proxy_yaml(port: int, origin: str, slice_mb: float) -> str:
    return (
        f"server: {{address: 127.0.0.1, port: {port}}}\n"
        "logging: {level: warn}\n"
        "cache:\n"
        "  enabled: true\n"
        "  memory: {max_cache_size_mb: 512, max_item_size_mb: 16}\n"
        f"  slice_size_mb: {slice_mb:g}\n"
        "buckets:\n" + bucket_yaml("bench", origin)
    )


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, int]:
    """One GET: (status, X-Cache, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("X-Cache") or "", len(response.read())
    finally:
        conn.close()


def cold_ranges(port: int, path: str, count: int, seed: int) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    seen = []
    for _ in range(count):
        first = rng.randrange(OBJECT_SIZE - RANGE_SIZE)
        status, xcache, size = get(port, path, {"Range": f"bytes={first}-{first + RANGE_SIZE - 1}"})
        assert status == 206 and size == RANGE_SIZE, (status, size)
        seen.append((status, xcache))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--sizes", default="1,2,4,8", help="slice sizes in MiB, comma-separated")
    parser.add_argument("--no-pin", action="store_true")
    a = parser.parse_args()
    exit_on_sigterm()
    out = results_dir("slices")
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    sizes = [float(s) for s in a.sizes.split(",")]
    targets: list[tuple[str, float]] = [("bypass", 0.0)] + [(f"slice-{s:g}", s) for s in sizes]
    objects = {"big.bin": OBJECT_SIZE} | {f"cold-{name}.bin": OBJECT_SIZE for name, _ in targets}
    origin = LoggedOrigin(extra=objects)
    log(f"origin nginx {origin.url} (access log {origin.access_log})")
    results: dict[str, Any] = {"args": vars(a), "machine": facts, "pinning": pinning}
    rows = []
    try:
        for name, slice_mb in targets:
            port = free_port()
            config = proxy_yaml(port, origin.url, slice_mb)
            server = start_proxy(name, config, out, "/bench/1k.bin", port)
            try:
                row = measure(a, out, origin, server.pid, port, name, slice_mb)
            finally:
                server.stop()
            results[name] = row
            rows.append(row)
            log(f"{name}: {row}")
    finally:
        origin.close()
    table = md_table(
        [
            "target",
            "full GET MiB/s",
            "256 KiB ranges req/s",
            "ranges MiB/s",
            "p99 ms",
            "64 cold ranges: origin GETs",
            "seconds",
        ],
        [
            [
                r["target"],
                f"{r['full_mib_s']:.0f}",
                f"{r['ranges_rps']:.0f}",
                f"{r['ranges_rps'] * RANGE_SIZE / MIB:.0f}",
                f"{r['ranges_p99_ms']:.1f}",
                r["cold_origin_gets"],
                f"{r['cold_seconds']:.2f}",
            ]
            for r in rows
        ],
    )
    text = f"{facts_md(facts, pinning)}\n\n{table}\n"
    (out / "results.md").write_text(text)
    dump(out / "results.json", results)
    print(text)


def measure(
    a: argparse.Namespace,
    out: Path,
    origin: LoggedOrigin,
    pid: int,
    port: int,
    name: str,
    slice_mb: float,
) -> dict[str, Any]:
    path = "/bench/big.bin"
    status, xcache, size = get(port, path)  # warm: cuts the object into slices
    assert status == 200 and size == OBJECT_SIZE, (status, size)
    expected = "BYPASS" if slice_mb == 0 else "HIT"
    status, xcache, size = get(port, path)
    assert (status, xcache, size) == (200, expected, OBJECT_SIZE), (status, xcache, size)
    before = origin.count("big.bin")
    full = [run_curl(f"http://127.0.0.1:{port}{path}") for _ in range(a.runs)]
    assert all(f["status"] == 200 and f["bytes"] == OBJECT_SIZE for f in full), full
    script = out / f"{name}-ranges.lua"
    script.write_text(RANGES_LUA.format(seed=7, size=OBJECT_SIZE, length=RANGE_SIZE, path=path))
    ranges = [
        run_wrk(
            name,
            f"http://127.0.0.1:{port}{path}",
            a.conns,
            a.seconds,
            pid,
            [pid],
            ["-s", str(script)],
        )
        for _ in range(a.runs)
    ]
    assert all(r.result.non2xx == 0 and r.result.errors == 0 for r in ranges), [
        r.result.raw for r in ranges
    ]
    during = origin.count("big.bin") - before
    cold_key = f"cold-{name}.bin"
    cold_before = origin.count(cold_key)
    cold_started = time.monotonic()
    cold_ranges(port, f"/bench/{cold_key}", 64, seed=11)
    cold_seconds = time.monotonic() - cold_started
    return {
        "target": name,
        "slice_mb": slice_mb,
        "full_mib_s": median([f["mib_s"] for f in full]),
        "ranges_rps": median([r.result.rps for r in ranges]),
        "ranges_p99_ms": median([r.result.p99_ms for r in ranges]),
        "origin_gets_while_measuring": during,
        "cold_origin_gets": origin.count(cold_key) - cold_before,
        "cold_seconds": cold_seconds,
        "slices_of_object": 0 if slice_mb == 0 else -(-OBJECT_SIZE // int(slice_mb * MIB)),
        "wrk": [r.cmd for r in ranges],
    }


if __name__ == "__main__":
    main()

"""Latency at 50 % of the saturation throughput, coordinated-omission-free (issue #14, target 6).

Two proxies with the default configuration in front of the bench origin: ``cached``
(``cache_layers: [memory]``, every request a memory hit on the 1 KiB object) and ``uncached``
(no cache: every request a GET to the origin, a MISS). For each:

1. saturation: ``wrk -t1 -c50`` for ``--sat-seconds``, its requests/s;
2. an open-loop run at ``--load`` (0.5) x that rate for ``--seconds``: request *i* is due
   at ``t0 + i / rate`` whatever happened to the earlier ones (a fixed schedule, as wrk2
   does), sent on an idle keep-alive connection of a pool of ``--conns`` (or queued until one
   is free), and its latency is measured from the time it was *due*, so a stall of the proxy
   counts against every request it delayed (no coordinated omission). A request not answered
   ``--timeout`` s after the schedule ends counts as a timeout.

Reports P50/P95/P99/max, the rate achieved, and how late the client itself sent requests
(p99 of send time - due time: if that grows, the client, not the proxy, is the limit).
Targets: P95 < 50 ms cached, < 200 ms uncached. Example (about 1.5 minutes)::

    .venv/bin/python bench/latency.py --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from aioload import Conn, Latencies, connect, get_request, percentile_ms
from benchlib import dump, machine_facts, set_pinning
from origin import Origin
from proxylib import (
    BUCKET,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    fmt,
    log,
    md_table,
    results_dir,
    run_wrk,
    start_proxy,
    warm,
)

from devharness.ports import free_port

PATH = f"/{BUCKET}/1k.bin"
KINDS = {"cached": "cache: {enabled: true, cache_layers: [memory]}\n", "uncached": ""}
TARGET_P95_MS = {"cached": 50.0, "uncached": 200.0}


async def open_loop(
    port: int, rate: float, seconds: float, conns: int, timeout: float
) -> dict[str, Any]:
    """Requests due at a fixed rate; latency from the due time (see the module docstring)."""
    loop = asyncio.get_running_loop()
    pool, errors = await connect(port, get_request(PATH, port), conns, conns, 10.0)
    idle = collections.deque(pool)
    waiting: collections.deque[float] = collections.deque()  # due times with no free conn
    lat = Latencies()
    lateness: list[float] = []
    outstanding = 0
    t0 = loop.time() + 0.1
    total = int(rate * seconds)

    def send(conn: Conn, due: float) -> None:
        nonlocal outstanding
        outstanding += 1
        lateness.append(loop.time() - due)

        def done(status: int, at: float) -> None:
            nonlocal outstanding
            outstanding -= 1
            lat.add(status, at - due)
            if conn.closed:
                return
            if waiting:
                send(conn, waiting.popleft())
            else:
                idle.append(conn)

        conn.send(done)

    gc.disable()  # the client's GC pauses would count as the proxy's latency
    for i in range(total):  # bounded: ``total`` requests, each sent at or after its due time
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 32 == 0:  # behind schedule: still read responses now and then
            await asyncio.sleep(0)
        if idle:
            send(idle.popleft(), due)
        else:
            waiting.append(due)
    limit = loop.time() + timeout
    while (outstanding or waiting) and loop.time() < limit:
        await asyncio.sleep(0.05)
    gc.enable()
    lat.timeouts = outstanding + len(waiting)
    for conn in pool:
        conn.abort()
    return {
        **lat.summary(),
        "requests": total,
        "rate": round(rate, 1),
        "achieved_rps": round(len(lat.ok) / seconds, 1),
        "send_late_p99_ms": percentile_ms(lateness, 99),
        "connect_errors": len(errors),
    }


def proxy_config(kind: str, port: int, endpoint: str) -> str:
    return (
        f"server: {{address: 127.0.0.1, port: {port}}}\n"
        + KINDS[kind]
        + "buckets:\n"
        + bucket_yaml(BUCKET, endpoint)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="open-loop run per proxy")
    p.add_argument("--sat-seconds", type=int, default=8, help="wrk saturation run per proxy")
    p.add_argument("--load", type=float, default=0.5, help="fraction of saturation")
    p.add_argument("--conns", type=int, default=64, help="keep-alive connection pool")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--kinds", default="cached,uncached")
    p.add_argument("--no-pin", action="store_true")
    a = p.parse_args()
    exit_on_sigterm()
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    out = results_dir("latency")
    log(f"{pinning}; results in {out}")
    kinds = [k for k in a.kinds.split(",") if k]
    origin = Origin()
    servers: dict[str, Any] = {}
    results: dict[str, Any] = {"args": vars(a), "machine": facts, "runs": {}}
    try:
        for kind in kinds:
            port = free_port()
            servers[kind] = start_proxy(kind, proxy_config(kind, port, origin.url), out, PATH, port)
        if "cached" in servers:
            _, xc, seen = warm(servers["cached"].url + PATH)
            if xc != "HIT":
                raise SystemExit(f"cached: no X-Cache: HIT after warming: {seen}")
        ours = [origin.process.pid] + [s.pid for s in servers.values()]
        for kind, srv in servers.items():
            run_wrk(kind, srv.url + PATH, 50, 2, srv.pid, ours)  # warm-up
            sat = run_wrk(kind, srv.url + PATH, 50, a.sat_seconds, srv.pid, ours)
            (out / f"wrk-{kind}.txt").write_text(sat.result.raw)
            rate = a.load * sat.result.rps
            log(f"{kind}: saturation {sat.result.rps:.0f} req/s -> open loop at {rate:.0f}")
            res = asyncio.run(open_loop(srv.port, rate, a.seconds, a.conns, a.timeout))
            res.update(
                saturation_rps=sat.result.rps,
                saturation_foreign_cores=sat.foreign_cores,
                wrk=sat.cmd,
            )
            results["runs"][kind] = res
            log(f"{kind}: {res}")
    finally:
        for srv in servers.values():
            srv.stop()
        origin.close()
    dump(out / "results.json", results)
    rows = []
    for kind, r in results["runs"].items():
        target = TARGET_P95_MS[kind]
        rows.append(
            [
                kind,
                f"{r['saturation_rps']:.0f}",
                f"{r['rate']:.0f} ({a.load:.0%})",
                f"{r['achieved_rps']:.0f}",
                fmt(r["p50_ms"]),
                fmt(r["p95_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["max_ms"]),
                f"{r['timeouts']}/{r['broken']}",
                fmt(r["send_late_p99_ms"]),
                f"< {target:.0f} ms: {'yes' if r['p95_ms'] < target else 'no'}",
            ]
        )
    md = "\n".join(
        [
            f"### Latency at {a.load:.0%} of saturation, open loop, 1 KiB, {a.seconds:g} s "
            f"per proxy, {a.conns} keep-alive connections",
            "",
            facts_md(facts, pinning),
            "",
            md_table(
                [
                    "proxy",
                    "saturation req/s (wrk -c50)",
                    "offered req/s",
                    "achieved req/s",
                    "P50 ms",
                    "P95 ms",
                    "P99 ms",
                    "max ms",
                    "timeouts/broken",
                    "client send lateness p99 ms",
                    "P95 target",
                ],
                rows,
            ),
            "",
            f"    .venv/bin/python bench/latency.py --seconds {a.seconds:g} "
            f"--sat-seconds {a.sat_seconds} --load {a.load:g}",
            "",
        ]
    )
    (out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

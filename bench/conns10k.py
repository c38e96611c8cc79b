"""10,000 concurrent keep-alive connections on a 1 KiB memory hit (issue #14, target 5).

Raises ``RLIMIT_NOFILE`` for itself and the processes it starts, starts the bench origin and
the proxy (the default configuration plus a memory cache; ``--server-extra`` adds
``server`` keys, e.g. ``listen_backlog: 50`` for the old listen queue), warms the object to
``X-Cache: HIT``, then from one asyncio client process (on the load CPU):

1. opens ``--conns`` connections (at most ``--parallel`` connecting at once, 10 s each);
2. measures the proxy's RSS with all of them idle;
3. on every connection, GETs the 1 KiB object once every ``--interval`` seconds (4 s:
   2,500 req/s offered by 10,000 connections; ``0``: back to back, a closed loop that
   saturates the proxy) for ``--seconds``, one request in flight per connection; a response
   slower than ``--timeout`` (10 s) counts as a timeout and its connection is dropped;
4. measures RSS again with the connections idle, then closes them.

Reports connect errors, timeouts, statuses, p50/p99 latency (send to last byte), RSS
before/idle/after and KiB per idle connection, and the kernel's listen-queue counters
(``ListenOverflows``/``ListenDrops`` in /proc/net/netstat, machine-wide) during the run.
Example (about 1 minute)::

    .venv/bin/python bench/conns10k.py --conns 10000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from aioload import Conn, Latencies, connect, get_request, raise_nofile
from benchlib import (
    ForeignLoad,
    cpu_seconds,
    dump,
    machine_facts,
    own_cpu_seconds,
    rss_kib,
    set_pinning,
)
from origin import Origin
from proxylib import (
    BUCKET,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    log,
    md_table,
    results_dir,
    start_proxy,
    warm,
)

from devharness.ports import free_port

PATH = f"/{BUCKET}/1k.bin"


def proxy_config(port: int, endpoint: str, server_extra: str) -> str:
    extra = f", {server_extra}" if server_extra else ""
    return (
        f"server: {{address: 127.0.0.1, port: {port}{extra}}}\n"
        "cache: {enabled: true, cache_layers: [memory]}\n"
        "buckets:\n" + bucket_yaml(BUCKET, endpoint)
    )


def listen_counters() -> dict[str, int]:
    """TcpExt ListenOverflows / ListenDrops (accept queue full; SYN or ACK dropped)."""
    rows = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(rows[::2], rows[1::2], strict=False):
        if names[0] == "TcpExt:":
            d = dict(zip(names[1:], values[1:], strict=False))
            return {k: int(d.get(k, 0)) for k in ("ListenOverflows", "ListenDrops")}
    return {}


async def paced_loop(
    conns: list[Conn], seconds: float, timeout: float, interval: float
) -> tuple[Latencies, list[int]]:
    """
    Every connection GETs the object once per ``interval`` seconds (the connections' start
    times spread evenly over the first interval; ``0``: back to back, a closed loop) until
    ``seconds`` are up; in-flight requests finish.  A response later than its connection's
    next start time is followed by the next request at once.

    :returns: the latencies, and the responses each connection got (fairness).
    """
    loop = asyncio.get_running_loop()
    lat = Latencies()
    t0 = loop.time()
    end = t0 + seconds
    sent_at: dict[Conn, float] = {}
    served: dict[Conn, int] = dict.fromkeys(conns, 0)

    def start(conn: Conn, due: float) -> None:
        if conn.closed:  # dropped by the timeout sweep
            return
        sent_at[conn] = loop.time()

        def done(status: int, at: float) -> None:
            lat.add(status, at - sent_at.pop(conn))
            served[conn] += status != 0
            following = due + interval
            if status and following < end:
                loop.call_at(max(following, at), start, conn, following)

        conn.send(done)

    for i, conn in enumerate(conns):
        due = t0 + interval * i / len(conns)
        loop.call_at(due, start, conn, due)
    limit = end + timeout + 1.0
    while (sent_at or loop.time() < end) and loop.time() < limit:  # bounded by limit
        await asyncio.sleep(0.25)
        now = loop.time()
        for conn, t0 in list(sent_at.items()):
            if now - t0 > timeout:
                lat.timeouts += 1
                del sent_at[conn]
                conn.abort()
    lat.timeouts += len(sent_at)
    return lat, sorted(served.values())


async def client(a: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    res: dict[str, Any] = {"rss_before_kib": rss_kib(pid)}
    counters0 = listen_counters()
    t0 = time.monotonic()
    conns, errors = await connect(port, get_request(PATH, port), a.conns, a.parallel, 10.0)
    res["connect_seconds"] = round(time.monotonic() - t0, 2)
    res["connect_errors"] = len(errors)
    res["connect_error_kinds"] = sorted(set(errors))
    await asyncio.sleep(2.0)  # the proxy has accepted and set up every connection
    res["rss_idle_kib"] = rss_kib(pid)
    res["open"] = sum(not c.closed for c in conns)
    gc.disable()  # the client's own GC pauses would show as proxy latency
    cpu0, own0, wall0 = cpu_seconds(pid), own_cpu_seconds(), time.monotonic()
    live = [c for c in conns if not c.closed]
    lat, served = await paced_loop(live, a.seconds, a.timeout, a.interval)
    wall = time.monotonic() - wall0
    res["server_cpu"] = round((cpu_seconds(pid) - cpu0) / wall, 2)
    res["client_cpu"] = round((own_cpu_seconds() - own0) / wall, 2)
    gc.enable()
    res.update(lat.summary())
    res["per_conn_min_median_max"] = [served[0], served[len(served) // 2], served[-1]]
    res["rps"] = round(len(lat.ok) / wall)
    res["still_open"] = sum(not c.closed for c in conns)
    await asyncio.sleep(2.0)
    res["rss_after_kib"] = rss_kib(pid)
    n = max(res["open"], 1)
    res["kib_per_idle_conn"] = round((res["rss_idle_kib"] - res["rss_before_kib"]) / n, 2)
    res["kib_per_idle_conn_after_load"] = round(
        (res["rss_after_kib"] - res["rss_before_kib"]) / n, 2
    )
    for c in conns:
        c.abort()
    await asyncio.sleep(2.0)
    res["rss_closed_kib"] = rss_kib(pid)
    counters1 = listen_counters()
    res["listen_counters"] = {k: counters1[k] - counters0.get(k, 0) for k in counters1}
    return res


def run_variant(
    a: argparse.Namespace, origin: Origin, extra: str, out: Path, name: str
) -> dict[str, Any]:
    """One proxy with ``extra`` server keys, warmed, then the client's run against it."""
    port = free_port()
    config = proxy_config(port, origin.url, extra)
    proxy = start_proxy(name, config, out, PATH, port)
    try:
        _, xc, seen = warm(proxy.url + PATH)
        log(f"{name} warm: {seen}")
        if xc != "HIT":
            raise SystemExit(f"no X-Cache: HIT after warming: {seen}")
        foreign = ForeignLoad([origin.process.pid, proxy.pid])
        res = asyncio.run(client(a, port, proxy.pid))
        res["foreign_cores"] = round(foreign.cores(), 2)
    finally:
        proxy.stop()
    res.update(server_extra=extra, config=config)
    log(f"{name}: {res}")
    return res


def row(res: dict[str, Any]) -> list[Any]:
    return [
        res["server_extra"] or "(default)",
        res["open"],
        res["connect_errors"],
        res["timeouts"],
        res["broken"],
        res["responses"],
        res["rps"],
        f"{res['server_cpu']:.0%}/{res['client_cpu']:.0%}/{res['foreign_cores']:.2f}",
        res["p50_ms"],
        res["p99_ms"],
        res["max_ms"],
        "/".join(map(str, res["per_conn_min_median_max"])),
        f"{res['rss_before_kib']} / {res['rss_idle_kib']} / "
        f"{res['rss_after_kib']} / {res['rss_closed_kib']}",
        f"{res['kib_per_idle_conn']} ({res['kib_per_idle_conn_after_load']} after load)",
        "/".join(str(v) for v in res["listen_counters"].values()),
    ]


HEADER = [
    "server extra",
    "open",
    "connect errors",
    "timeouts",
    "broken",
    "responses",
    "req/s",
    "CPU server/client/foreign cores",
    "p50 ms",
    "p99 ms",
    "max ms",
    "responses per conn min/median/max",
    "RSS before / idle / after / closed KiB",
    "KiB per idle conn",
    "listen overflows/drops",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--conns", type=int, default=10_000)
    p.add_argument("--parallel", type=int, default=10_000, help="connects in flight at once")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request")
    p.add_argument(
        "--interval",
        type=float,
        default=4.0,
        help="seconds between one connection's requests (0: back to back)",
    )
    p.add_argument(
        "--server-extra",
        action="append",
        help="more server keys, YAML flow style; repeat to run several proxies in turn "
        "(default: one proxy, the default configuration)",
    )
    p.add_argument("--no-pin", action="store_true")
    a = p.parse_args()
    variants = a.server_extra or [""]
    exit_on_sigterm()
    nofile = raise_nofile(2 * a.conns + 1024)
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    out = results_dir("conns10k")
    log(f"RLIMIT_NOFILE {nofile}; {pinning}; results in {out}")
    origin = Origin()
    runs: list[dict[str, Any]] = []
    try:
        for i, extra in enumerate(variants):
            runs.append(run_variant(a, origin, extra, out, f"proxy{i}"))
    finally:
        origin.close()
    dump(out / "results.json", {"args": vars(a), "machine": facts, "nofile": nofile, "runs": runs})
    extras = "".join(f" --server-extra '{v}'" for v in variants if v)
    md = "\n".join(
        [
            f"### {a.conns} keep-alive connections, 1 KiB memory hit, one request per "
            f"connection every {a.interval:g} s, {a.seconds:g} s, client timeout {a.timeout:g} s",
            "",
            facts_md(facts, pinning),
            "",
            md_table(HEADER, [row(r) for r in runs]),
            "",
            *(
                f"- {r['server_extra'] or '(default)'}: statuses {r['statuses']}; connect "
                f"errors {r['connect_error_kinds']}; connect phase {r['connect_seconds']} s"
                for r in runs
            ),
            "",
            f"    .venv/bin/python bench/conns10k.py --conns {a.conns} --seconds {a.seconds:g}"
            f" --interval {a.interval:g}{extras}",
            "",
        ]
    )
    (out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

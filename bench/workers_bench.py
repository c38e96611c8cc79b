"""Worker processes benchmark: 1 KiB memory-cache hits with ``server.workers: 2`` against
``server.workers: 1``, in one run, the two proxies measured in turn (ABAB...).

Both proxies run side by side (``cache_layers: [memory]``, ``logging: {level: warn}``) in front
of the nginx origin of ``bench/origin.py``; each is warmed until every worker answers
``X-Cache: HIT`` (the response header ``X-Yatagarasu-Worker`` tells which worker did). No CPU
pinning: the workers are meant to use every core, and wrk shares them. The load is
``wrk -t1 -c50`` (``--conns``), as in ``bench/cache_bench.py``. Server CPU counts the parent and
its worker processes. Raw output goes to ``bench/results/workers-<UTC stamp>/``; the markdown
table is printed and saved there as ``results.md``. Example::

    .venv/bin/python bench/workers_bench.py --seconds 10 --runs 3
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import dump, machine_facts, set_pinning, wait_quiet
from proxylib import (
    BUCKET,
    LoggedOrigin,
    Run,
    add_wrk_options,
    bucket_yaml,
    curl_headers,
    exit_on_sigterm,
    facts_md,
    fmt,
    log,
    md_table,
    results_dir,
    run_wrk,
    start_proxy,
    summarize,
)

from devharness.http_client import http_request
from devharness.ports import free_port

WORKERS = (1, 2)


def proxy_config(workers: int, port: int, endpoint: str) -> str:
    return (
        f"server: {{address: 127.0.0.1, port: {port}, workers: {workers}}}\n"
        "logging: {level: warn}\n"
        "cache: {enabled: true, cache_layers: [memory], "
        "memory: {max_cache_size_mb: 64, max_item_size_mb: 10}}\n"
        "buckets:\n" + bucket_yaml(BUCKET, endpoint)
    )


def warm_every_worker(url: str, workers: int, tries: int = 500) -> dict[str, str]:
    """GET on new connections until each worker has answered a HIT (bounded by ``tries``)."""
    hits: dict[str, str] = {}
    for _ in range(tries):
        _, headers, _ = curl_headers(url)
        worker = headers.get("x-yatagarasu-worker", "0")
        if headers.get("x-cache") == "HIT":
            hits[worker] = "HIT"
        if len(hits) == workers:
            break
        time.sleep(0.01)
    return hits


def served_by_worker(base_url: str) -> dict[str, float]:
    """:returns: bucket requests answered so far by each worker (from ``/metrics``)."""
    text = http_request("GET", base_url + "/metrics", timeout=10.0).body.decode()
    served: dict[str, float] = {}
    for match in re.finditer(
        rf'yatagarasu_requests_total{{bucket="{BUCKET}",[^}}]*?(?:worker="(\d+)")?}} (\S+)', text
    ):
        worker = match.group(1) or "0"
        served[worker] = served.get(worker, 0.0) + float(match.group(2))
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_wrk_options(parser, seconds=10, warmup=3, pin=False)
    parser.add_argument(
        "--quiet-cores", type=float, default=0.3, help="wait (60 s at most) for other load"
    )
    a = parser.parse_args()
    exit_on_sigterm()
    out = results_dir("workers")
    pinning = set_pinning(False)
    facts = machine_facts()
    origin = LoggedOrigin()
    servers: dict[int, Any] = {}
    notes: list[str] = []
    runs: dict[int, list[Run]] = {w: [] for w in WORKERS}
    try:
        for workers in WORKERS:
            port = free_port()
            config = proxy_config(workers, port, origin.url)
            servers[workers] = start_proxy(
                f"workers{workers}", config, out, f"/{BUCKET}/1k.bin", port
            )
        urls = {w: servers[w].url + f"/{BUCKET}/1k.bin" for w in WORKERS}
        ours = [origin.process.pid] + [s.pid for s in servers.values()]
        for workers in WORKERS:
            run_wrk(
                f"w{workers}", urls[workers], a.conns, a.warmup_seconds, servers[workers].pid, ours
            )
            hits = warm_every_worker(urls[workers], workers)
            log(f"workers {workers}: HIT from workers {sorted(hits)}")
            if len(hits) != workers:
                notes.append(f"workers {workers}: only workers {sorted(hits)} answered HIT")
        for i in range(a.runs):
            for workers in WORKERS:
                _, foreign = wait_quiet(ours, a.quiet_cores, 60.0)
                if foreign >= a.quiet_cores:
                    notes.append(f"run {i} workers {workers}: {foreign:.2f} foreign cores before")
                before = served_by_worker(servers[workers].url)
                r = run_wrk(
                    f"w{workers}", urls[workers], a.conns, a.seconds, servers[workers].pid, ours
                )
                (out / f"wrk-workers{workers}-{i}.txt").write_text(r.result.raw)
                after = served_by_worker(servers[workers].url)
                share = {w: round(after[w] - before.get(w, 0.0)) for w in sorted(after)}
                r.extra["served_by_worker"] = share
                runs[workers].append(r)
                log(
                    f"workers {workers} run {i}: {r.result.rps:.0f} req/s p50 "
                    f"{r.result.p50_ms:.2f} ms p99 {r.result.p99_ms:.2f} ms errors "
                    f"{r.result.errors} non2xx {r.result.non2xx} server CPU "
                    f"{100 * r.cpu_util:.0f} % foreign {r.foreign_cores:.2f} cores; "
                    f"requests by worker {share}"
                )
    finally:
        for server in servers.values():
            server.stop()
        origin.close()
    summary = {w: summarize(runs[w]) for w in WORKERS}
    results = {"args": vars(a), "machine": facts, "runs": runs, "summary": summary, "notes": notes}
    dump(out / "results.json", results)
    base = summary[1]["rps"]
    rows = [
        [
            f"workers: {w}",
            f"{s['rps']:.0f}",
            f"{s['rps'] / base:.2f}x",
            fmt(s["p50_ms"]),
            fmt(s["p99_ms"]),
            f"{100 * s['cpu_util']:.0f} %",
            f"{s['errors']}/{s['non2xx']}",
            fmt(s["foreign_max"]),
            " / ".join(
                ":".join(f"{n}" for n in r.extra["served_by_worker"].values()) for r in runs[w]
            ),
        ]
        for w, s in summary.items()
    ]
    md = "\n".join(
        [
            f"### 1 KiB memory hits, workers: 2 vs 1 (wrk -t1 -c{a.conns}, {a.seconds} s, "
            f"median of {a.runs}, ABAB)",
            "",
            facts_md(facts, pinning),
            "",
            md_table(
                [
                    "proxy",
                    "req/s",
                    "vs workers: 1",
                    "p50 ms",
                    "p99 ms",
                    "server CPU",
                    "sock err/non-2xx",
                    "foreign cores (max)",
                    "requests per worker, each run",
                ],
                rows,
            ),
            *(["", "Notes: " + "; ".join(notes)] if notes else []),
            "",
        ]
    )
    (out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

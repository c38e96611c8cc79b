"""Rate-limit cost benchmark: 1 KiB memory-cache hits with rate limits off and on (local
backend), two proxy processes measured in the same run, alternating.

Targets (each ``twistd -n yatagarasu``, ``cache_layers: [memory]``, ``logging: {level: warn}``,
in front of ``bench/origin.py``'s nginx):

* ``off``   -- no ``rate_limit`` section
* ``local`` -- ``server.rate_limit`` with ``global`` and ``per_ip`` limits and a bucket limit
  (``buckets[].rate_limit``), token bucket, local backend, limits far above what wrk reaches
  (every request is checked and charged in three limits; none is refused)

Every response must be a 200: a 429 would make the "on" numbers those of a cheaper path.
Raw output goes to ``bench/results/ratelimit-cost-<UTC stamp>/`` (git-ignored); the markdown
table is printed and saved there as ``results.md``.  Examples::

    .venv/bin/python bench/ratelimit_cost.py                        # 3 x 15 s per target
    .venv/bin/python bench/ratelimit_cost.py --seconds 2 --runs 1   # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import dump, machine_facts, set_pinning
from proxylib import (
    BUCKET,
    LoggedOrigin,
    Run,
    add_wrk_options,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    fmt,
    log,
    md_table,
    pct,
    results_dir,
    start_proxy,
    summarize,
    warm,
    wrk_rounds,
)

from devharness.ports import free_port

TARGETS = ("off", "local")
LIMITS = (
    "  rate_limit: {global: {requests_per_second: 10000000},"
    " per_ip: {requests_per_second: 10000000}}\n"
)


def proxy_config(kind: str, port: int, endpoint: str) -> str:
    on = kind == "local"
    bucket_limit = "rate_limit: {requests_per_second: 10000000}" if on else ""
    return (
        f"server:\n  address: 127.0.0.1\n  port: {port}\n"
        + (LIMITS if on else "")
        + "logging: {level: warn}\n"
        "cache: {enabled: true, cache_layers: [memory], "
        "memory: {max_cache_size_mb: 64, max_item_size_mb: 1}}\n"
        "buckets:\n" + bucket_yaml(BUCKET, endpoint, bucket_limit)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_wrk_options(parser)
    a = parser.parse_args()
    exit_on_sigterm()
    out = results_dir("ratelimit-cost")
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    origin = LoggedOrigin()
    servers: dict[str, Any] = {}
    runs: dict[str, list[Run]] = {}
    path = f"/{BUCKET}/1k.bin"
    try:
        for kind in TARGETS:
            port = free_port()
            cfg = proxy_config(kind, port, origin.url)
            servers[kind] = start_proxy(f"ratelimit-{kind}", cfg, out, path, port)
        for kind in TARGETS:
            status, cache, _ = warm(servers[kind].url + path)
            log(f"{kind}: warm {status} X-Cache {cache}")
        ours = [origin.process.pid] + [s.pid for s in servers.values()]
        runs = wrk_rounds(servers, path, a, ours, TARGETS)
    finally:
        for server in servers.values():
            server.stop()
        origin.close()
    summary = {t: summarize(runs[t]) for t in TARGETS}
    cost = 1 - summary["local"]["rps"] / summary["off"]["rps"]
    us = {t: summary[t]["cpu_util"] / summary[t]["rps"] * 1e6 for t in TARGETS}
    cpu_cost = us["local"] / us["off"] - 1
    table = md_table(
        [
            "target",
            "req/s (median)",
            "p50 ms",
            "p99 ms",
            "proxy CPU",
            "CPU µs/req",
            "errors",
            "req/s vs off",
        ],
        [
            [
                t,
                fmt(summary[t]["rps"], 0),
                fmt(summary[t]["p50_ms"]),
                fmt(summary[t]["p99_ms"]),
                fmt(summary[t]["cpu_util"]),
                fmt(us[t], 1),
                summary[t]["errors"] + summary[t]["non2xx"],
                pct(summary[t]["rps"], summary["off"]["rps"]),
            ]
            for t in TARGETS
        ],
    )
    per_run = "; ".join(
        f"{t}: " + ", ".join(f"{r.result.rps:.0f}" for r in runs[t]) for t in TARGETS
    )
    verdict = (
        f"cost of rate limiting (local): throughput {cost * 100:.1f} %, CPU per request"
        f" {cpu_cost * 100:.1f} %; req/s per run: {per_run}"
    )
    command = (
        f".venv/bin/python bench/ratelimit_cost.py --seconds {a.seconds} --runs {a.runs}"
        f" --conns {a.conns}"
    )
    report = f"{facts_md(facts, pinning)}\n\n`{command}`\n\n{table}\n\n{verdict}\n"
    (out / "results.md").write_text(report)
    dump(out / "results.json", {"summary": summary, "cpu_us": us})
    print(report)
    bad = sum(summary[t]["errors"] + summary[t]["non2xx"] for t in TARGETS)
    if bad:
        raise SystemExit(f"{bad} errors or non-2xx responses")


if __name__ == "__main__":
    main()

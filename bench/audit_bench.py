"""Audit trail cost benchmark: 1 KiB memory-cache hits with ``audit_log`` off and with the
``file`` sink on, two proxy processes measured in the same run, alternating.

Targets (each ``twistd -n yatagarasu``, ``cache_layers: [memory]``, ``logging: {level: warn}``,
in front of ``bench/origin.py``'s nginx):

* ``off``  -- no ``audit_log`` section (no record is built)
* ``file`` -- ``audit_log: {enabled: true, outputs: [file], file: {path: <tmp>/audit.log}}``
  (defaults: flushed every second by a thread, 100 MiB rotation)

After the runs the ``file`` proxy is stopped with SIGTERM (its sink flushes) and the lines of
its audit file are compared with the requests the proxy counted
(``yatagarasu_requests_total``, scraped just before): they must be equal. wrk's own count is
printed too; it leaves out the requests still in flight when it stopped (at most one per
connection per run), which the proxy answered, or saw aborted, and recorded.

Raw output goes to ``bench/results/audit-<UTC stamp>/`` (git-ignored); the markdown table is
printed and saved there as ``results.md``.  Examples::

    .venv/bin/python bench/audit_bench.py                        # 3 x 15 s per target
    .venv/bin/python bench/audit_bench.py --seconds 2 --runs 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import urllib.request
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

TARGETS = ("off", "file")


def proxy_config(kind: str, port: int, endpoint: str, audit_file: Path) -> str:
    audit = (
        f"audit_log: {{enabled: true, outputs: [file], file: {{path: '{audit_file}'}}}}\n"
        if kind == "file"
        else ""
    )
    return (
        f"server: {{address: 127.0.0.1, port: {port}}}\n"
        "logging: {level: warn}\n"
        "cache: {enabled: true, cache_layers: [memory], "
        "memory: {max_cache_size_mb: 64, max_item_size_mb: 1}}\n"
        + audit
        + "buckets:\n"
        + bucket_yaml(BUCKET, endpoint)
    )


def requests_counted(url: str) -> int:
    """Every request the proxy answered so far, from ``yatagarasu_requests_total``."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("yatagarasu_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total) + 1  # and this scrape, counted once it has ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_wrk_options(parser)
    a = parser.parse_args()
    exit_on_sigterm()
    out = results_dir("audit")
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    origin = LoggedOrigin()
    audit_dir = Path(tempfile.mkdtemp(prefix="yatagarasu-audit-bench-"))
    audit_file = audit_dir / "audit.log"
    servers: dict[str, Any] = {}
    runs: dict[str, list[Run]] = {}
    try:
        for kind in TARGETS:
            port = free_port()
            cfg = proxy_config(kind, port, origin.url, audit_file)
            servers[kind] = start_proxy(f"audit-{kind}", cfg, out, f"/{BUCKET}/1k.bin", port)
        path = f"/{BUCKET}/1k.bin"
        for kind in TARGETS:
            status, cache, _ = warm(servers[kind].url + path)
            log(f"{kind}: warm {status} X-Cache {cache}")
        ours = [origin.process.pid] + [s.pid for s in servers.values()]
        runs = wrk_rounds(servers, path, a, ours, TARGETS)
        counted = requests_counted(servers["file"].url)
        servers["file"].process.stop(signal.SIGTERM, timeout=30)
        lines = audit_file.read_text().splitlines()
        paths = [json.loads(line)["request_path"] for line in lines]
        wrk_total = sum(r.result.requests for r in runs["file"])
    finally:
        for server in servers.values():
            server.stop()
        origin.close()
    summary = {t: summarize(runs[t]) for t in TARGETS}
    cost = 1 - summary["file"]["rps"] / summary["off"]["rps"]
    # CPU per request holds better than req/s on a shared machine (the proxy's CPU may be
    # taken by others); both are reported.
    us = {t: summary[t]["cpu_util"] / summary[t]["rps"] * 1e6 for t in TARGETS}
    cpu_cost = us["file"] / us["off"] - 1
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
    counts = (
        f"audit lines {len(lines)}; requests the proxy counted {counted}"
        f" ({'equal' if len(lines) == counted else 'DIFFERENT'}); wrk completed {wrk_total}"
        f" in its runs (+ warm-up and probe requests: {len(lines) - wrk_total} lines,"
        f" {paths.count('/health')} of them /health); cost of the file sink: throughput"
        f" {cost * 100:.1f} %, CPU per request {cpu_cost * 100:.1f} %"
    )
    command = (
        f".venv/bin/python bench/audit_bench.py --seconds {a.seconds} --runs {a.runs}"
        f" --conns {a.conns}"
    )
    report = f"{facts_md(facts, pinning)}\n\n`{command}`\n\n{table}\n\n{counts}\n"
    (out / "results.md").write_text(report)
    dump(
        out / "results.json",
        {"summary": summary, "cpu_us": us, "lines": len(lines), "counted": counted},
    )
    print(report)
    if len(lines) != counted:
        raise SystemExit(f"audit lines {len(lines)} != requests {counted}")


if __name__ == "__main__":
    main()

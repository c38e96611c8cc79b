"""Tracing cost benchmark: 1 KiB memory-cache hits with ``observability`` not configured,
with tracing configured but disabled, and with tracing on (OTLP/HTTP export), three proxy
processes measured in the same run, alternating.

Targets (each ``twistd -n yatagarasu``, ``cache_layers: [memory]``, ``logging: {level: warn}``,
in front of ``bench/origin.py``'s nginx):

* ``none``     -- no ``observability`` section
* ``disabled`` -- ``observability: {tracing: {enabled: false, ...}, slow_query: {enabled: false}}``
  (a request carries no timing record: no span object at all)
* ``on``       -- ``tracing: {enabled: true, exporter: otlp}`` exporting to an OTLP/HTTP
  receiver in this process (``devharness/otlp_receiver.py``), every request sampled
* ``before``   -- with ``--before-twistd PATH`` (another checkout's ``.venv/bin/twistd``, e.g.
  the code before tracing existed): the ``none`` configuration run by that code

After the runs the ``on`` proxy is stopped with SIGTERM (the last spans are flushed) and the
server spans the receiver got are counted against the requests the proxy answered
(``yatagarasu_requests_total``); spans dropped by the bounded export queue show as a
difference.

Raw output goes to ``bench/results/tracing-<UTC stamp>/`` (git-ignored); the markdown table is
printed and saved there as ``results.md``.  Examples::

    .venv/bin/python bench/tracing_bench.py                        # 3 x 15 s per target
    .venv/bin/python bench/tracing_bench.py --seconds 2 --runs 1   # smoke test
"""

from __future__ import annotations

import argparse
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import TWISTD, dump, machine_facts, set_pinning
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
    wait_for_foreign_bench,
    warm,
    wrk_rounds,
)

from devharness.otlp_receiver import OtlpReceiver
from devharness.ports import free_port

TARGETS = ("none", "disabled", "on")


def proxy_config(kind: str, port: int, endpoint: str, collector: str) -> str:
    observability = {
        "none": "",
        "before": "",
        "disabled": (
            "observability: {tracing: {enabled: false, exporter: otlp,"
            f" otlp_endpoint: '{collector}'}}, slow_query: {{enabled: false}}}}\n"
        ),
        "on": (
            "observability: {tracing: {enabled: true, exporter: otlp,"
            f" otlp_endpoint: '{collector}'}}}}\n"
        ),
    }[kind]
    return (
        f"server: {{address: 127.0.0.1, port: {port}}}\n"
        "logging: {level: warn}\n"
        "cache: {enabled: true, cache_layers: [memory], "
        "memory: {max_cache_size_mb: 64, max_item_size_mb: 1}}\n"
        + observability
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
    parser.add_argument("--wait-until", default="23:59", help="wait for bench/run.py until")
    parser.add_argument("--before-twistd", help="also run the none config with this twistd")
    a = parser.parse_args()
    targets = (*TARGETS, "before") if a.before_twistd else TARGETS
    exit_on_sigterm()
    out = results_dir("tracing")
    note = wait_for_foreign_bench(a.wait_until)
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    origin = LoggedOrigin()
    receiver = OtlpReceiver().start()
    servers: dict[str, Any] = {}
    runs: dict[str, list[Run]] = {}
    try:
        for kind in targets:
            port = free_port()
            cfg = proxy_config(kind, port, origin.url, receiver.endpoint)
            twistd = a.before_twistd if kind == "before" else TWISTD
            probe = f"/{BUCKET}/1k.bin"
            servers[kind] = start_proxy(f"tracing-{kind}", cfg, out, probe, port, twistd)
        path = f"/{BUCKET}/1k.bin"
        for kind in targets:
            status, cache, _ = warm(servers[kind].url + path)
            log(f"{kind}: warm {status} X-Cache {cache}")
        ours = [origin.process.pid] + [s.pid for s in servers.values()]
        runs = wrk_rounds(servers, path, a, ours, targets)
        counted = requests_counted(servers["on"].url)
        servers["on"].process.stop(signal.SIGTERM, timeout=30)
        server_spans = sum(1 for span in receiver.spans if span.kind == 2)
    finally:
        for server in servers.values():
            server.stop()
        origin.close()
        receiver.stop()
    summary = {t: summarize(runs[t]) for t in targets}
    # CPU per request holds better than req/s on a shared machine; both are reported.
    us = {t: summary[t]["cpu_util"] / summary[t]["rps"] * 1e6 for t in targets}
    table = md_table(
        [
            "target",
            "req/s (median)",
            "p50 ms",
            "p99 ms",
            "proxy CPU",
            "CPU µs/req",
            "errors",
            "req/s vs none",
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
                pct(summary[t]["rps"], summary["none"]["rps"]),
            ]
            for t in targets
        ],
    )
    counts = (
        f"tracing on: {server_spans} server spans received for {counted} requests answered"
        f" ({counted - server_spans} dropped by the bounded export queue)"
    )
    command = (
        f".venv/bin/python bench/tracing_bench.py --seconds {a.seconds} --runs {a.runs}"
        f" --conns {a.conns}" + (f" --before-twistd {a.before_twistd}" if a.before_twistd else "")
    )
    report = f"{facts_md(facts, pinning)}\n\n`{command}`\n\n{table}\n\n{counts}\n" + (
        f"\n{note}\n" if note else ""
    )
    (out / "results.md").write_text(report)
    dump(
        out / "results.json",
        {"summary": summary, "cpu_us": us, "server_spans": server_spans, "counted": counted},
    )
    print(report)


if __name__ == "__main__":
    main()

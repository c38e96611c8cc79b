"""Slow streams of a 5 GiB object: process RSS plus kernel socket memory, and what the stream
buffers cost at full speed.

Starts the benchmark origin (``bench/origin.py``: nginx, a sparse 5 GiB ``5g.bin``), the bare
relay (``bench/bare_relay.py``) and one proxy per ``--variant`` (``NAME`` or
``NAME=server keys``, e.g. ``small=stream_buffer_bytes: 16384, socket_send_buffer_bytes:
262144``; ``default`` is the proxy with no ``server`` keys beyond the listener). Then:

* **big**: ``--big-runs`` full-speed ``curl`` downloads of the 1 GiB object per target,
  interleaved; median MiB/s and the server's CPU seconds per GiB (steadier on a busy box);
* **slow**: per target, ``--clients`` slow clients (``bench/slow_clients.py``) reading
  ``5g.bin`` at ``--rate`` each for ``--seconds``; at 75 % of that: VmRSS, and from
  ``ss -tmnp`` the server's client-facing send queues (``w``) and upstream receive queues
  (``r``). KiB/conn = (RSS during - RSS before) / clients; total = RSS during + both queues.

Results: ``bench/results/streams-<UTC stamp>/`` (``results.json``, ``results.md``).

    .venv/bin/python bench/streams.py --variant default \\
        --variant autotuned="socket_send_buffer_bytes: 0, stream_buffer_bytes: 65536"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import (
    PIN,
    PYTHON,
    REPO,
    TWISTD,
    Server,
    cpu_seconds,
    machine_facts,
    median,
    rss_kib,
    run_curl,
    set_pinning,
    ss_skmem,
)
from origin import BUCKET, Origin
from proxylib import exit_on_sigterm, log, md_table, results_dir
from run import PROXY_CONFIG

from devharness.ports import free_port

BIG_KEY = f"/{BUCKET}/1g.bin"
SLOW_KEY = f"/{BUCKET}/5g.bin"
MIB = 1024 * 1024


def start_targets(origin: Origin, variants: list[str], out: Path) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    port = free_port()
    argv = [PYTHON, "bench/bare_relay.py", "--port", str(port), "--upstream", origin.url,
            "--pool-size", "128"]  # fmt: skip
    servers["relay"] = Server("relay", argv, port, out / "relay.log")
    for variant in variants:
        name, _, keys = variant.partition("=")
        port = free_port()
        cfg = out / f"proxy-{name}.yaml"
        cfg.write_text(
            PROXY_CONFIG.format(
                port=port,
                server_extra=f", {keys}" if keys else "",
                endpoint=origin.url,
                logging="",
            )
        )
        argv = [TWISTD, "-n", "--pidfile=", "yatagarasu", "--config", str(cfg)]
        servers[f"proxy {name}"] = Server(name, argv, port, out / f"proxy-{name}.log", timeout=60)
    for name, srv in servers.items():
        log(f"{name}: {srv.url} pid {srv.pid}")
    return servers


def big(servers: dict[str, Server], runs: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for i in range(runs):
        for name, srv in servers.items():  # interleaved: drift hits every target alike
            cpu0 = cpu_seconds(srv.pid)
            r = run_curl(srv.url + BIG_KEY)
            r["cpu_s_per_gib"] = (cpu_seconds(srv.pid) - cpu0) * 1024**3 / max(r["bytes"], 1)
            results[name].append(r)
            log(f"big {name} run {i}: {r['mib_s']:.0f} MiB/s, {r['cpu_s_per_gib']:.2f} CPU s/GiB")
    return {
        name: {
            "runs": rs,
            "mib_s": median([r["mib_s"] for r in rs]),
            "cpu_s_per_gib": median([r["cpu_s_per_gib"] for r in rs]),
            "complete": all(r["status"] == 200 and r["bytes"] == 1024**3 for r in rs),
        }
        for name, rs in results.items()
    }


def slow(srv: Server, origin_port: int, args: argparse.Namespace) -> dict[str, Any]:
    before = rss_kib(srv.pid)
    cmd = [*PIN["load"], PYTHON, "bench/slow_clients.py", "--url", srv.url + SLOW_KEY,
           "--clients", str(args.clients), "--rate", args.rate,
           "--duration", str(args.seconds)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    time.sleep(args.seconds * 0.75)
    during = rss_kib(srv.pid)
    client_side = ss_skmem(srv.pid, local_port=srv.port)
    upstream = ss_skmem(srv.pid, peer_port=origin_port)
    stdout, _ = proc.communicate(timeout=args.seconds + 60)
    time.sleep(3.0)
    clients = json.loads(stdout.strip().splitlines()[-1])
    total = during * 1024 + client_side["w"] + upstream["r"]
    return {
        "rss_before_kib": before,
        "rss_during_kib": during,
        "rss_after_kib": rss_kib(srv.pid),
        "kib_per_conn": (during - before) / args.clients,
        "client_side": client_side,
        "upstream_side": upstream,
        "total_mib": total / MIB,
        "clients": clients,
    }


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    b, s = results["big"], results["slow"]
    relay = b["relay"]["mib_s"]
    rows = [
        [
            name,
            f"{v['mib_s']:.0f}",
            f"{v['mib_s'] / relay:.2f}",
            f"{v['cpu_s_per_gib']:.2f}",
            str(v["complete"]),
        ]
        for name, v in b.items()
    ]
    lines = [
        f"1 GiB at full speed (curl, median of {args.big_runs}, interleaved):",
        "",
        md_table(["target", "MiB/s", "vs relay", "CPU s/GiB", "complete"], rows),
        "",
        f"{args.clients} slow clients x {args.rate}B/s on 5g.bin, {args.seconds:.0f} s:",
        "",
    ]
    rows = []
    for name, v in s.items():
        cs, us, cl = v["client_side"], v["upstream_side"], v["clients"]
        rows.append([
            name, str(v["rss_before_kib"]), str(v["rss_during_kib"]), f"{v['kib_per_conn']:.0f}",
            f"{cs['w'] / MIB:.1f} ({cs['sockets']})", f"{us['r'] / MIB:.1f} ({us['sockets']})",
            f"{v['total_mib']:.0f}", f"{cl['mib_s_total']}", f"{cl['mib_s_per_client_min']}",
            str(v["rss_after_kib"]),
        ])  # fmt: skip
    lines.append(
        md_table(
            [
                "target",
                "RSS before KiB",
                "RSS during KiB",
                "KiB/conn",
                "client send queues MiB (socks)",
                "upstream recv queues MiB (socks)",
                "total MiB",
                "clients MiB/s",
                "slowest client MiB/s",
                "RSS after KiB",
            ],
            rows,
        )
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variant", action="append", default=[], help="NAME[=server keys]")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rate", default="1M", help="bytes/s per slow client (K/M suffixes)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--big-runs", type=int, default=5)
    p.add_argument("--scenarios", default="big,slow")
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    exit_on_sigterm()
    variants = args.variant or ["default"]
    pinning = set_pinning(not args.no_pin)
    out = results_dir("streams")
    results: dict[str, Any] = {"args": vars(args), "machine": machine_facts(), "pinning": pinning}
    log(f"{pinning}; results in {out}")
    with Origin() as origin:
        servers = start_targets(origin, variants, out)
        try:
            if "big" in args.scenarios:
                run_curl(origin.url + BIG_KEY)  # page cache warm-up, not counted
                results["big"] = big(servers, args.big_runs)
            if "slow" in args.scenarios:
                results["slow"] = {}
                for name, srv in servers.items():
                    r = results["slow"][name] = slow(srv, origin.port, args)
                    log(
                        f"slow {name}: {r['kib_per_conn']:.0f} KiB/conn, total "
                        f"{r['total_mib']:.0f} MiB, client send queues "
                        f"{r['client_side']['w'] / MIB:.1f} MiB, upstream recv queues "
                        f"{r['upstream_side']['r'] / MIB:.1f} MiB; clients {r['clients']}"
                    )
        finally:
            for srv in servers.values():
                srv.stop()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "big" in results and "slow" in results:
        text = table(results, args)
        (out / "results.md").write_text(text)
        print(text)
    print(f"raw: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()

"""Look for memory kept after slow clients abort: rounds of slow clients, RSS + object counts.

Starts the origin and one server (the proxy, or the bare relay for comparison), runs
``--rounds`` rounds of ``--clients`` slow clients (each aborted at the end of its round), and
after each round prints VmRSS and the object types whose live count grew the most since the
baseline (via ``bench/twistd_objcount.py`` for the proxy, so no change to the proxy itself).

Usage::

    .venv/bin/python bench/leakcheck.py [--target proxy|relay] [--rounds 6] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import PYTHON, REPO, Server, rss_kib
from origin import Origin
from run import PROXY_CONFIG

from devharness.ports import free_port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", choices=("proxy", "relay"), default="proxy")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rate", default="2M")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()

    out = REPO / "bench" / "results" / time.strftime("leakcheck-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    counts_file = out / "objcount.json"
    os.environ["OBJCOUNT_FILE"] = str(counts_file)
    with Origin() as origin:
        port = free_port()
        if args.target == "proxy":
            cfg = out / "proxy.yaml"
            cfg.write_text(
                PROXY_CONFIG.format(
                    port=port,
                    server_extra="",
                    endpoint=origin.url,
                    logging="logging: {level: warn}\n",
                )
            )
            argv = [PYTHON, "bench/twistd_objcount.py", "-n", "--pidfile=", "yatagarasu",
                    "--config", str(cfg)]  # fmt: skip
        else:
            argv = [PYTHON, "bench/bare_relay.py", "--port", str(port), "--upstream", origin.url]
        srv = Server(args.target, argv, port, out / f"{args.target}.log")
        try:
            last_gc: dict[str, object] = {}

            def counts() -> dict[str, int]:
                if args.target != "proxy":
                    return {}
                before = counts_file.stat().st_mtime if counts_file.exists() else 0
                os.kill(srv.pid, signal.SIGUSR1)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if counts_file.exists() and counts_file.stat().st_mtime != before:
                        data = json.loads(counts_file.read_text())
                        last_gc.clear()
                        last_gc.update(
                            collected=data["collected"],
                            freed=data["freed_by_gc"],
                            cycles=data.get("cycles", {}),
                        )
                        return dict(data["live"])
                    time.sleep(0.2)
                return {}

            base = counts()
            rss0 = rss_kib(srv.pid)
            print(f"{args.target} pid {srv.pid}: RSS {rss0} KiB before round 1", flush=True)
            for i in range(args.rounds):
                cmd = [PYTHON, "bench/slow_clients.py", "--url", f"{srv.url}/bench/1g.bin",
                       "--clients", str(args.clients), "--rate", args.rate,
                       "--duration", str(args.seconds)]  # fmt: skip
                subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=args.seconds + 60)
                time.sleep(3)
                rss_pre = rss_kib(srv.pid)
                now = counts()
                rss = rss_kib(srv.pid)
                if last_gc:
                    freed = last_gc["freed"]
                    assert isinstance(freed, dict)
                    print(
                        f"after round {i + 1}: RSS {rss_pre} KiB (+{rss_pre - rss0}) before a "
                        f"full gc.collect(), which found {last_gc['collected']} unreachable "
                        f"objects: " + ", ".join(f"{k} {n}" for k, n in list(freed.items())[:8]),
                        flush=True,
                    )
                    cycles = last_gc["cycles"]
                    assert isinstance(cycles, dict)
                    for chain, n in cycles.items():
                        print(f"  cycle ({n} objects of its first type): {chain}", flush=True)
                grown = sorted(
                    ((n - base.get(k, 0), k) for k, n in now.items() if n > base.get(k, 0)),
                    reverse=True,
                )[: args.top]
                print(f"after round {i + 1}: RSS {rss} KiB (+{rss - rss0}) after it; grown: "
                      + ", ".join(f"{k} +{d}" for d, k in grown), flush=True)  # fmt: skip
        finally:
            srv.stop()
    print(f"raw: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()

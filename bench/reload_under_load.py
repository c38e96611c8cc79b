"""Reload under load: GETs keep running through configuration reloads; count what fails.

A real ``twistd -n yatagarasu`` in front of moto (SigV4 checked). Client threads
(:class:`devharness.get_load.GetLoad`, keep-alive connections) send GETs: three of four to a
1 KiB object of a cached bucket (memory hits), one of four to a bucket with caching off (each a
signed GET to moto). Meanwhile the configuration file is rewritten and reloaded ``--reloads``
times, cycling through: a valid config B (one more bucket, a resized memory layer: rebuilt),
an invalid one (refused, old generation kept), the valid config A (the memory layer is resized
back: rebuilt again). Reloads alternate between ``SIGHUP`` and ``POST /admin/reload``.

Reported: requests, requests per second, status counts, connection errors, reloads applied
and refused. A failure is any status other than 200, or any connection error; the exit code
is 1 when there was one. Results go to ``bench/results/reload-<UTC stamp>/results.json``.

    .venv/bin/python bench/reload_under_load.py --seconds 60 --reloads 20 --clients 6
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from devharness.get_load import GetLoad
from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config, write_config
from devharness.twistd import ProxyProcess, start_proxy
from devharness.waiting import wait_until

SECRET = "bench-reload-" + "b" * 48
ADMIN = [{"claim": "role", "operator": "equals", "value": "admin"}]


def configs(moto: MotoS3Server, bucket: str) -> list[tuple[str, dict[str, Any]]]:
    a = {
        "logging": {"level": "warning"},
        "jwt": {"secret": SECRET, "admin_claims": ADMIN},
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 16}},
        "buckets": [
            bucket_config(moto, "pub", bucket),
            bucket_config(moto, "raw", bucket, cache={"enabled": False}),
        ],
    }
    b = {
        **a,
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 32}},
        "buckets": [*a["buckets"], bucket_config(moto, "extra", bucket)],
    }
    invalid = {**a, "buckets": [*a["buckets"], {"name": "broken"}]}
    return [("B", b), ("invalid", invalid), ("A", a)]


def reload_once(proxy: ProxyProcess, use_admin: bool) -> None:
    before = proxy.reloads_finished()
    if use_admin:
        claims = {"sub": "bench", "role": "admin", "exp": int(time.time()) + 600}
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        proxy.request("POST", "/admin/reload", headers={"Authorization": f"Bearer {token}"})
    else:
        proxy.send_signal(signal.SIGHUP)
    wait_until(lambda: proxy.reloads_finished() > before, timeout=60, what="the reload")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    moto = MotoS3Server(workdir / "moto").start()
    try:
        bucket = moto.create_bucket()
        moto.put_object(bucket, "hit.bin", b"h" * 1024)
        moto.put_object(bucket, "miss.bin", b"m" * 1024)
        plan = configs(moto, bucket)
        a = plan[-1][1]
        proxy = start_proxy(a, workdir / "proxy")
        try:
            server = {"address": proxy.address, "port": proxy.port}
            paths = ["/pub/hit.bin", "/pub/hit.bin", "/pub/hit.bin", "/raw/miss.bin"]
            load = GetLoad(
                proxy.address,
                proxy.port,
                paths,
                clients=args.clients,
                max_requests=10**7,
                max_seconds=args.seconds + 120,
            )
            interval = args.seconds / (args.reloads + 1)
            started = time.monotonic()
            applied: list[str] = []
            with load:
                for i in range(args.reloads):
                    time.sleep(max(0.0, started + interval * (i + 1) - time.monotonic()))
                    name, config = plan[i % len(plan)]
                    write_config({**config, "server": server}, proxy.config_path)
                    reload_once(proxy, use_admin=bool(i % 2))
                    applied.append(name)
                time.sleep(max(0.0, started + args.seconds - time.monotonic()))
            elapsed = time.monotonic() - started
            ok = proxy.metric('yatagarasu_config_reloads_total{result="ok"}')
            refused = proxy.metric('yatagarasu_config_reloads_total{result="error"}')
            generation = proxy.metric("yatagarasu_config_generation")
        finally:
            proxy.stop()
    finally:
        moto.stop()
    total = sum(load.statuses.values())
    failures = sum(n for status, n in load.statuses.items() if status != 200)
    return {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "requests": total,
        "requests_per_second": round(total / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "failed_responses": failures,
        "connection_errors": len(load.errors),
        "first_errors": load.errors[:10],
        "reloads": applied,
        "reloads_ok": ok,
        "reloads_refused": refused,
        "final_generation": generation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--reloads", type=int, default=20, help="reloads during the load")
    parser.add_argument("--clients", type=int, default=6, help="client threads")
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(__file__).resolve().parent / "results" / f"reload-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        result = run(args, Path(tmp))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"results: {out / 'results.json'}")
    failed = result["failed_responses"] or result["connection_errors"]
    print(
        f"{result['requests']} requests in {result['seconds']}s"
        f" ({result['requests_per_second']} req/s) through {len(result['reloads'])} reloads"
        f" ({result['reloads_ok']:g} applied, {result['reloads_refused']:g} refused):"
        f" {result['failed_responses']} failed responses, {result['connection_errors']}"
        " connection errors"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

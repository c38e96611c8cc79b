"""Soak: mixed load on one proxy for a bounded time; RSS and live objects sampled each minute.

The proxy (``twistd -n yatagarasu`` run in-process by ``bench/twistd_objcount.py``, default
configuration plus a memory cache and an admin JWT secret) sits in front of the benchmark
origin (``bench/origin.py``, nginx) with two buckets: ``bench`` (cached) and ``raw`` (cache
off). For ``--minutes`` it gets, at once:

* paced GETs (``--rate`` per second over ``--clients`` keep-alive connections): memory hits
  on ``/bench/1k.bin`` and ``/bench/100k.bin``, misses on ``/raw/1k.bin`` and
  ``/raw/100k.bin``;
* every ``--abort-every`` seconds, ``--abort-clients`` slow clients on a 1 GiB object
  (``bench/slow_clients.py``, alternately uncached and through the cache), aborted after
  ``--abort-seconds``;
* every ``--purge-every`` seconds a ``POST /admin/cache/purge`` (admin token);
* every ``--reload-every`` seconds a ``SIGHUP`` after rewriting the configuration (a third
  bucket comes and goes, so each reload builds a new generation; the memory layer keeps its
  size, so RSS does not swing with the reloads).

Each minute: VmRSS plus the memory layer's memory files (``memfd``: bodies of 64 KiB and more,
not mapped, so not in VmRSS), read before anything is collected, then ``SIGUSR1``, which makes the
proxy run a full ``gc.collect()`` and report how many unreachable objects it found and how
many objects are live after it. Verdict: RSS growth from minute ``--from-minute`` to the end
< 10 %, and live objects after a full GC not growing over the same span (at most
``--live-tolerance`` more at the end); each end is the median of three samples (the minute
and its neighbours), since RSS moves with the memory cache filling between purges.
Results: ``bench/results/soak-<UTC stamp>/``.

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --minutes 3     # a short look (not a verdict)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import PYTHON, REPO, Server, machine_facts, rss_kib
from origin import Origin
from proxylib import bucket_yaml, exit_on_sigterm, log, results_dir

from devharness.get_load import GetLoad
from devharness.ports import free_port
from devharness.processes import memory_files

SECRET = "bench-soak-" + "s" * 48
CONFIG = """\
server: {{address: 127.0.0.1, port: {port}}}
jwt: {{secret: "{secret}", admin_claims: [{{claim: role, operator: equals, value: admin}}]}}
cache: {{enabled: true, memory: {{max_cache_size_mb: 32}}}}
buckets:
{buckets}"""
PATHS = ("/bench/1k.bin", "/raw/1k.bin", "/bench/100k.bin", "/bench/1k.bin", "/raw/100k.bin")
STREAMS = ("/raw/1g.bin", "/bench/1g.bin")


def write_config(path: Path, port: int, endpoint: str, extra_bucket: bool) -> None:
    buckets = bucket_yaml("bench", endpoint) + bucket_yaml(
        "raw", endpoint, extra="cache: {enabled: false}"
    )
    if extra_bucket:
        buckets += bucket_yaml("extra", endpoint)
    path.write_text(CONFIG.format(port=port, secret=SECRET, buckets=buckets))


def admin_post(port: int, path: str) -> int:
    claims = {"sub": "soak", "role": "admin", "exp": int(time.time()) + 600}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def objcount(pid: int, counts_file: Path) -> dict[str, Any]:
    """SIGUSR1 to the proxy; its report (full GC) once written, ``{}`` after 60 s."""
    before = counts_file.stat().st_mtime_ns if counts_file.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if counts_file.exists() and counts_file.stat().st_mtime_ns != before:
            data: dict[str, Any] = json.loads(counts_file.read_text())
            return data
        time.sleep(0.2)
    return {}


def verdict(samples: list[dict[str, Any]], from_minute: int, tolerance: int) -> dict[str, Any]:
    first = next((i for i, s in enumerate(samples) if s["minute"] >= from_minute), None)
    if first is None or first < 1 or len(samples) - first < 4:
        return {"verdict": "too short for a verdict"}
    start, end = samples[first - 1 : first + 2], samples[-3:]

    def mid(window: list[dict[str, Any]], key: str) -> int:
        return int(statistics.median(s[key] for s in window))

    rss = [mid(start, "rss_kib"), mid(end, "rss_kib")]
    live = [mid(start, "live_objects"), mid(end, "live_objects")]
    rss_growth = (rss[1] - rss[0]) / rss[0]
    live_growth = live[1] - live[0]
    peak = max(s["live_objects"] for s in samples if s["minute"] >= from_minute)
    rss_ok, live_ok = rss_growth < 0.10, live_growth <= tolerance
    return {
        "from_minute": samples[first]["minute"],
        "to_minute": samples[-2]["minute"],
        "rss_kib": rss,
        "rss_growth_pct": round(100 * rss_growth, 2),
        "live_objects": live,
        "live_growth": live_growth,
        "live_peak": peak,
        "rss_ok": rss_ok,
        "live_ok": live_ok,
        "verdict": "met" if rss_ok and live_ok else "missed",
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--rate", type=float, default=100.0, help="paced GETs per second")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--abort-every", type=float, default=20.0)
    p.add_argument("--abort-clients", type=int, default=10)
    p.add_argument("--abort-seconds", type=float, default=5.0)
    p.add_argument("--purge-every", type=float, default=30.0)
    p.add_argument("--reload-every", type=float, default=60.0)
    p.add_argument("--from-minute", type=int, default=5)
    p.add_argument("--live-tolerance", type=int, default=500, help="live objects")
    args = p.parse_args()
    exit_on_sigterm()
    out = results_dir("soak")
    counts_file = out / "objcount.json"
    os.environ["OBJCOUNT_FILE"] = str(counts_file)
    samples: list[dict[str, Any]] = []
    events: Counter[str] = Counter()
    result: dict[str, Any] = {"args": vars(args), "machine": machine_facts()}
    with Origin() as origin:
        port = free_port()
        cfg = out / "proxy.yaml"
        write_config(cfg, port, origin.url, extra_bucket=False)
        argv = [PYTHON, "bench/twistd_objcount.py", "-n", "--pidfile=", "yatagarasu",
                "--config", str(cfg)]  # fmt: skip
        srv = Server("proxy", argv, port, out / "proxy.log", probe="/bench/1k.bin", timeout=60)
        log(f"proxy pid {srv.pid} on {srv.url}; origin {origin.url}; results in {out}")
        seconds = 60.0 * args.minutes
        streams: subprocess.Popen[str] | None = None
        try:
            load = GetLoad(
                "127.0.0.1",
                port,
                list(PATHS),
                clients=args.clients,
                max_requests=10**8,  # bounded by the time long before the count
                max_seconds=seconds + 60,
                rate=args.rate,
            )
            with load:
                t0 = time.monotonic()
                next_abort, next_purge = t0 + 5, t0 + args.purge_every
                next_reload, next_sample = t0 + args.reload_every, t0
                for _ in range(10**7):  # bounded by the deadline
                    now = time.monotonic()
                    if now - t0 > seconds + 1:
                        break
                    if now >= next_sample:
                        files, files_kib = memory_files(srv.pid)
                        rss = rss_kib(srv.pid) + files_kib
                        data = objcount(srv.pid, counts_file)
                        sample = {
                            "minute": round((now - t0) / 60),
                            "rss_kib": rss,
                            "memory_files": files,
                            "memory_files_kib": files_kib,
                            "rss_after_gc_kib": rss_kib(srv.pid) + files_kib,
                            "live_objects": data.get("live_total", -1),
                            "gc_found": data.get("collected", -1),
                            "gc_found_types": dict(list(data.get("freed_by_gc", {}).items())[:6]),
                            "cycles": data.get("cycles", {}),
                            "requests": sum(load.statuses.values()),
                            **{k: v for k, v in events.items()},
                        }
                        samples.append(sample)
                        log(
                            f"minute {sample['minute']}: RSS {rss} KiB "
                            f"({sample['rss_after_gc_kib']} after the GC; {files} memory "
                            f"files, {files_kib} KiB, counted in), "
                            f"{sample['live_objects']} live objects, the GC found "
                            f"{sample['gc_found']} unreachable; {sample['requests']} GETs, "
                            f"{dict(events)}"
                        )
                        next_sample += 60
                    if streams is not None and streams.poll() is not None:
                        streams = None
                    if now >= next_abort and streams is None:
                        url = srv.url + STREAMS[events["abort_rounds"] % len(STREAMS)]
                        streams = subprocess.Popen(
                            [
                                PYTHON,
                                "bench/slow_clients.py",
                                "--url",
                                url,
                                "--clients",
                                str(args.abort_clients),
                                "--rate",
                                "1M",
                                "--duration",
                                str(args.abort_seconds),
                            ],
                            cwd=REPO,
                            stdout=subprocess.DEVNULL,
                            text=True,
                        )
                        events["abort_rounds"] += 1
                        events["aborted_streams"] += args.abort_clients
                        next_abort += args.abort_every
                    if now >= next_purge:
                        status = admin_post(port, "/admin/cache/purge")
                        events["purges" if status == 200 else f"purge_{status}"] += 1
                        next_purge += args.purge_every
                    if now >= next_reload:
                        events["reloads"] += 1
                        write_config(cfg, port, origin.url, bool(events["reloads"] % 2))
                        os.kill(srv.pid, signal.SIGHUP)
                        next_reload += args.reload_every
                    time.sleep(0.5)
            result["statuses"] = {str(k): v for k, v in sorted(load.statuses.items())}
            result["errors"] = dict(Counter(e.split(": ", 1)[1].split("(")[0] for e in load.errors))
        finally:
            if streams is not None:
                streams.wait(timeout=60)
            srv.stop()
    result["events"] = dict(events)
    result["samples"] = samples
    result["verdict"] = verdict(samples, args.from_minute, args.live_tolerance)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("statuses", "errors", "events", "verdict")}))
    print(f"raw: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()

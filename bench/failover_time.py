"""
Time to fail over: a bucket with two replicas (``devharness.broken_s3`` upstreams on
127.0.0.1) behind the real ``twistd yatagarasu``, a few clients GETting one object in a loop;
the primary is killed (``refused``: it stops listening and drops its connections) or stops
answering (``silent``: it accepts and never answers, so the first-byte timeout decides). The
bench reports, per run, the seconds from the kill to the first response served by the
secondary, and how many client requests failed meanwhile. Then the primary comes back and the
bench waits for the proxy to return to it (circuit ``timeout_seconds``) before the next run.

    .venv/bin/python bench/failover_time.py --runs 5 --clients 4

Everything is on 127.0.0.1; every wait is bounded in time and count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import machine_facts, median
from proxylib import exit_on_sigterm, log

from devharness.broken_s3 import BrokenS3
from devharness.twistd import ProxyProcess, start_proxy
from devharness.waiting import wait_until

BREAKER = {"failure_threshold": 3, "success_threshold": 1, "timeout_seconds": 2}
FIRST_BYTE_TIMEOUT = 1.0


@dataclass
class Clients:
    """Client threads GETting ``/ha/k`` in a loop; each answer is recorded with its time."""

    proxy: ProxyProcess
    count: int
    answers: list[tuple[float, int, bytes]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(self.count):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(self.proxy.address, self.proxy.port, timeout=10)
        for _ in range(1_000_000):  # bounded; stop() ends it long before
            if self._stop.is_set():
                break
            try:
                conn.request("GET", "/ha/k")
                response = conn.getresponse()
                status, body = response.status, response.read()
            except (OSError, http.client.HTTPException) as e:
                status, body = 0, type(e).__name__.encode()
                conn.close()
                conn = http.client.HTTPConnection(self.proxy.address, self.proxy.port, timeout=10)
            with self._lock:
                self.answers.append((time.monotonic(), status, body))
        conn.close()

    def since(self, t0: float) -> list[tuple[float, int, bytes]]:
        with self._lock:
            return [a for a in self.answers if a[0] >= t0]


def first_from(clients: Clients, t0: float, body: bytes, timeout: float) -> float:
    """:returns: seconds from ``t0`` to the first answer carrying ``body``."""
    found: list[float] = []

    def seen() -> bool:
        for t, status, got in clients.since(t0):
            if status == 200 and got == body:
                found.append(t - t0)
                return True
        return False

    wait_until(seen, timeout=timeout, interval=0.005, what=f"an answer {body!r}")
    return found[0]


def settle_on(clients: Clients, body: bytes, timeout: float) -> None:
    """Wait until the last answers of every client all carried ``body`` (nothing in flight
    is still routed elsewhere)."""
    window = 3 * clients.count

    def settled() -> bool:
        with clients._lock:
            last = clients.answers[-window:]
        return len(last) == window and all(s == 200 and b == body for _, s, b in last)

    wait_until(settled, timeout=timeout, interval=0.01, what=f"every client on {body!r}")


def one_run(clients: Clients, primary: BrokenS3, how: str) -> dict[str, Any]:
    settle_on(clients, b"from primary", timeout=30)
    t0 = time.monotonic()
    if how == "refused":
        primary.stop()
    else:
        primary.mode, primary.delay = "slow", 30.0
    seconds = first_from(clients, t0, b"from secondary", timeout=30)
    time.sleep(1.0)  # let in-flight requests of the switch finish
    answers = clients.since(t0)
    failures = [f"{status} {body[:120]!r}" for _, status, body in answers if status != 200]
    if how == "refused":
        primary.start()
    else:
        primary.mode = "ok"
    back_t0 = time.monotonic()
    back = first_from(clients, back_t0, b"from primary", timeout=30)
    return {
        "how": how,
        "failover_seconds": round(seconds, 4),
        "requests_during": len(answers),
        "failed": len(failures),
        "failures": failures,
        "back_to_primary_seconds": round(back, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    exit_on_sigterm()
    primary = BrokenS3(b"from primary").start()
    secondary = BrokenS3(b"from secondary").start()
    workdir = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    config = {
        "logging": {"level": "warn"},
        "buckets": [
            {
                "name": "ha",
                "path_prefix": "/ha",
                "s3": {
                    "first_byte_timeout": FIRST_BYTE_TIMEOUT,
                    "retry": {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 200},
                    "circuit_breaker": BREAKER,
                    "replicas": [
                        {"name": n, "priority": p, "bucket": n, "endpoint": s.endpoint_url}
                        for n, p, s in (("primary", 1, primary), ("secondary", 2, secondary))
                    ],
                },
            }
        ],
    }
    proxy = start_proxy(config, workdir)
    clients = Clients(proxy, args.clients)
    results: list[dict[str, Any]] = []
    try:
        clients.start()
        for how in ("refused", "silent"):
            for i in range(args.runs):
                result = one_run(clients, primary, how)
                log(f"{how} run {i + 1}: {result}")
                results.append(result)
    finally:
        clients.stop()
        proxy.stop()
        primary.stop()
        secondary.stop()
    summary = {
        how: {
            "median_failover_seconds": median(
                [r["failover_seconds"] for r in results if r["how"] == how]
            ),
            "max_failover_seconds": max(r["failover_seconds"] for r in results if r["how"] == how),
            "failed_requests": sum(r["failed"] for r in results if r["how"] == how),
            "requests": sum(r["requests_during"] for r in results if r["how"] == how),
        }
        for how in ("refused", "silent")
    }
    report = {"facts": machine_facts(), "config": config, "runs": results, "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

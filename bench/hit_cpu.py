"""CPU per 1 KiB memory hit, in process: the unit-test harness's ``ProxySite`` on a fake clock
and ``StringTransport`` connections (no sockets, no wrk), timed with ``time.process_time``.

For before/after comparisons of request-path bookkeeping (metrics, the access log) on a machine
shared with other jobs, where wrk's req/s mostly measures the neighbours: process CPU time per
request is far less sensitive to them. Run it against two checkouts, alternating::

    cd /tmp && /path/to/venv/bin/python /path/to/bench/hit_cpu.py --repo /path/to/checkout

``--repo`` is put first on ``sys.path``, so that checkout's ``yatagarasu`` and ``tests`` are
the ones imported (run it from a directory that holds neither). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--access-log", action="store_true", help="logging.level info")
    a = parser.parse_args()
    sys.path.insert(0, a.repo)
    import yatagarasu
    from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response

    document: dict[str, Any] = {
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 64, "max_item_size_mb": 1}},
        "buckets": [bucket_entry()],
        "logging": {"level": "info" if a.access_log else "warn"},
    }
    h = Harness(document)
    body = b"x" * 1024
    h.get("/pub/1k.bin")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": str(len(body))}, body=body))
    _, transport = h.get("/pub/1k.bin")
    assert parse_response(transport.value()).header("x-cache") == "HIT"
    raw = b"GET /pub/1k.bin HTTP/1.1\r\nHost: proxy\r\n\r\n"
    per_request = []
    for _ in range(a.rounds):
        channel, transport = h.connect()
        started = time.process_time()
        for _ in range(a.requests):
            channel.dataReceived(raw)
            transport.clear()
        per_request.append((time.process_time() - started) / a.requests * 1e6)
    print(
        json.dumps(
            {
                "yatagarasu": yatagarasu.__file__,
                "requests": a.requests,
                "us_per_hit": [round(v, 2) for v in per_request],
                "median_us": round(statistics.median(per_request), 2),
            }
        )
    )


if __name__ == "__main__":
    main()

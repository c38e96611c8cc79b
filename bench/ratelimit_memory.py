"""Rate-limit memory bound: 100,000 distinct client addresses, RSS of the twistd process.

One ``twistd -n yatagarasu`` in front of ``bench/origin.py``'s nginx, with a memory cache (the
1 KiB object is a hit after the first request), ``server.trusted_proxies: [127.0.0.1]`` and a
``per_ip`` limit nobody reaches (``burst: 1000000``, refilled at 0.001/s; ``max_keys`` as
given, by default the default 100000), so every request creates or updates one key of the
per-IP table. Clients send ``X-Forwarded-For: 10.a.b.c``, a new address per request.
``headers_on_allowed: true`` lets the bench check at the end that the table did what it
should: the last address is still known (``RateLimit-Remaining`` one less than a new
address's), and, when more addresses came than ``max_keys``, the first one was forgotten.

Phases, RSS (``VmRSS``) read after each:

1. ``baseline``: ``--warm`` requests from one address (request objects, caches, allocator
   pools at their steady size);
2. ``N distinct``: ``--addresses`` requests, each from a new address (the table grows to
   ``min(N, max_keys)`` keys);
3. ``N more distinct`` (``--rounds`` times): as many again, all new (the table is full: one
   key forgotten per new one; RSS must level off, not grow with the number of addresses).

The "per key" figure is (RSS after 2 - baseline) / keys kept. Raw output goes to
``bench/results/ratelimit-memory-<UTC stamp>/`` (git-ignored). Example::

    .venv/bin/python bench/ratelimit_memory.py                    # 100000 addresses
    .venv/bin/python bench/ratelimit_memory.py --addresses 2000   # smoke test
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import dump, machine_facts, rss_kib, set_pinning
from proxylib import (
    BUCKET,
    LoggedOrigin,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    log,
    md_table,
    results_dir,
    start_proxy,
    warm,
)

from devharness.ports import free_port

THREADS = 4
BURST = 1_000_000


def remaining(port: int, path: str, ip: str) -> int:
    """``RateLimit-Remaining`` of one more request from ``ip``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"X-Forwarded-For": ip})
    response = conn.getresponse()
    response.read()
    conn.close()
    return int(response.getheader("RateLimit-Remaining") or -1)


def address(i: int) -> str:
    """The ``i``-th client address (distinct for i < 2**24)."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def send(port: int, path: str, first: int, count: int, distinct: bool) -> int:
    """``count`` GETs on ``THREADS`` keep-alive connections; returns how many were not 200."""
    failures = [0] * THREADS

    def worker(t: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(t, count, THREADS):
            ip = address(first + n) if distinct else address(first)
            conn.request("GET", path, headers={"X-Forwarded-For": ip})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures[t] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3600)
    return sum(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--addresses", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=20_000)
    parser.add_argument("--max-keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true")
    a = parser.parse_args()
    exit_on_sigterm()
    out = results_dir("ratelimit-memory")
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    origin = LoggedOrigin()
    port = free_port()
    config = (
        f"server: {{address: 127.0.0.1, port: {port}, trusted_proxies: [127.0.0.1],\n"
        f"  rate_limit: {{max_keys: {a.max_keys},"
        f" headers_on_allowed: true, per_ip: {{requests_per_second: 0.001, burst: {BURST}}}}}}}\n"
        "logging: {level: warn}\n"
        "cache: {enabled: true, cache_layers: [memory], "
        "memory: {max_cache_size_mb: 64, max_item_size_mb: 1}}\n"
        "buckets:\n" + bucket_yaml(BUCKET, origin.url)
    )
    path = f"/{BUCKET}/1k.bin"
    server = start_proxy("ratelimit-memory", config, out, path, port)
    rows = []
    try:
        status, cache, _ = warm(server.url + path)
        log(f"warm {status} X-Cache {cache}")
        phases = [
            ("baseline", 1 << 23, a.warm, False),
            (f"{a.addresses} distinct", 0, a.addresses, True),
        ]
        phases += [
            (f"{a.addresses} more distinct ({r + 1})", (r + 1) * a.addresses, a.addresses, True)
            for r in range(a.rounds)
        ]
        for name, first, count, distinct in phases:
            failures = send(port, path, first, count, distinct)
            rss = rss_kib(server.pid)
            rows.append((name, count, failures, rss))
            log(f"{name}: {count} requests, {failures} not 200, RSS {rss} KiB")
        total = (a.rounds + 1) * a.addresses
        last = remaining(port, path, address(total - 1))
        first = remaining(port, path, address(0))
        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
        tracked = [
            line.rsplit(" ", 1)[1]
            for line in metrics.splitlines()
            if line.startswith('yatagarasu_rate_limit_keys{scope="per_ip"}')
        ]
    finally:
        server.stop()
        origin.close()
    baseline = rows[0][3]
    kept = min(a.addresses, a.max_keys)
    per_key = (rows[1][3] - baseline) * 1024 / kept
    table = md_table(
        ["phase", "requests", "not 200", "RSS KiB", "vs baseline KiB"],
        [[n, c, f, r, r - baseline] for n, c, f, r in rows],
    )
    command = (
        f".venv/bin/python bench/ratelimit_memory.py --addresses {a.addresses}"
        f" --warm {a.warm} --max-keys {a.max_keys} --rounds {a.rounds}"
    )
    summary = (
        f"{kept} keys kept (max_keys {a.max_keys}): {per_key:.0f} bytes of RSS per key;"
        f" bound for this max_keys: {per_key * a.max_keys / 2**20:.1f} MiB above the baseline;"
        f" then, per round of {a.addresses} new addresses: "
        + ", ".join(f"{rows[i][3] - rows[i - 1][3]:+d} KiB" for i in range(2, len(rows)))
    )
    forgotten = first == BURST - 1
    expected = total > a.max_keys
    check = (
        f"table check: last address known ({'yes' if last == BURST - 2 else 'NO'},"
        f" remaining {last}), first address forgotten ({'yes' if forgotten else 'no'},"
        f" remaining {first}; expected {'yes' if expected else 'no'});"
        f' yatagarasu_rate_limit_keys{{scope="per_ip"}} {tracked[0] if tracked else "missing"}'
    )
    report = f"{facts_md(facts, pinning)}\n\n`{command}`\n\n{table}\n\n{summary}\n\n{check}\n"
    (out / "results.md").write_text(report)
    dump(out / "results.json", {"rows": rows, "per_key_bytes": per_key})
    print(report)
    if last != BURST - 2 or forgotten != expected:
        raise SystemExit("the per-IP table did not keep what it should")


if __name__ == "__main__":
    main()

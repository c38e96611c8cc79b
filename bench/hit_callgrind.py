"""Instructions per 1 KiB memory-cache hit, counted by ``valgrind --tool=callgrind``: the
request path's CPU cost as a number that does not depend on the load of a shared machine.

The hits go through the real ``ProxySite`` and Resource tree on an in-memory transport (the
unit harness, as ``bench/hit_cpu.py``), one keep-alive connection. Each variant runs twice
under callgrind, with ``--small`` and ``--large`` hits after the same warm-up; the difference
of the two totals divided by the difference of the counts is the cost of one hit (start-up,
imports and the warm-up cancel out).

Variants:

* ``warn`` -- ``logging: {level: warn}`` (no access log)
* ``info`` -- ``logging: {level: info, file: /dev/null}`` (the access log on, written by the
  proxy's own observer; twisted.logger's global publisher gets that observer too, as twistd's
  would)

Example (``--root`` another checkout with its own ``.venv``, e.g. the code before a change)::

    .venv/bin/python bench/hit_callgrind.py --variants warn,info
    .venv/bin/python bench/hit_callgrind.py --variants info --root /work/main
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchlib import callgrind_instructions

REPO = Path(__file__).resolve().parents[1]
WARMUP = 2000


def child(root: str, variant: str, requests: int) -> None:
    """Run in the child: warm up, then serve ``requests`` hits."""
    sys.path.insert(0, root)
    from twisted.logger import globalLogPublisher

    from tests.unit.fakes import FakeResponse, Harness, bucket_entry
    from yatagarasu.config.schema import LoggingConfig
    from yatagarasu.logs import make_observer

    logging = {"level": "warn"} if variant == "warn" else {"level": "info", "file": "/dev/null"}
    document: dict[str, object] = {
        "buckets": [bucket_entry()],
        "logging": logging,
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}},
    }
    h = Harness(document)
    if variant == "info":
        globalLogPublisher.addObserver(make_observer(LoggingConfig(level="info", file="/dev/null")))
    access_log = getattr(h.assembly, "access_log", None)
    start = getattr(access_log, "startService", None)
    if start is not None:
        start()  # as twistd runs the generation's services (lines are batched while running)
    h.clock.advance(1_800_000_000)
    raw = b"GET /pub/k HTTP/1.1\r\nHost: proxy\r\nUser-Agent: wrk\r\n\r\n"
    channel, transport = h.connect()
    channel.dataReceived(raw)
    answer = FakeResponse(200, {"Cache-Control": "max-age=100000"}, body=b"x" * 1024)
    h.agents["pub"].answer(answer)
    if b"X-Cache: MISS" not in transport.value():
        raise SystemExit("the first request was not a miss")
    for _ in range(WARMUP + requests):
        channel.dataReceived(raw)
        if len(transport.io.getvalue()) > 1 << 20:
            transport.clear()
    if b"X-Cache: HIT" not in transport.value():
        raise SystemExit("the hits were not hits")


def instructions(root: Path, variant: str, requests: int) -> int:
    """:returns: the instructions callgrind counted for a child serving ``requests`` hits."""
    python = root / ".venv" / "bin" / "python"
    argv = [str(python), str(REPO / "bench" / "hit_callgrind.py"), "--child", str(root), variant]
    return callgrind_instructions([*argv, "--small", str(requests)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default="warn,info")
    parser.add_argument("--root", default=str(REPO), help="checkout to measure (its .venv)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4000)
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "VARIANT"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.small)
        return
    root = Path(a.root)
    for variant in a.variants.split(","):
        few, many = instructions(root, variant, a.small), instructions(root, variant, a.large)
        per = (many - few) / (a.large - a.small)
        print(f"{root} {variant}: {per:,.0f} instructions per hit", flush=True)


if __name__ == "__main__":
    main()

"""Instructions per cache hit (1 KiB by default, ``--size``), counted by
``valgrind --tool=callgrind``: the request path's CPU cost as a number that does not depend on
the load of a shared machine.

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
* ``redis`` -- as ``warn``, with one cache layer, Redis (a private ``redis-server``, as
  ``bench/redis_get_callgrind.py`` starts): the proxy runs on the real epoll reactor (the
  request still arrives on the in-memory transport) and each hit waits for its reply over TCP.
  redis-server's own instructions are not counted (another process).

Example (``--root`` another checkout with its own ``.venv``, e.g. the code before a change)::

    .venv/bin/python bench/hit_callgrind.py --variants warn,info
    .venv/bin/python bench/hit_callgrind.py --variants info --root /work/main
    .venv/bin/python bench/hit_callgrind.py --variants warn,redis --size 102400
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib import callgrind_instructions

REPO = Path(__file__).resolve().parents[1]
WARMUP = 2000
#: The ``redis`` variant's warm-up (each of its hits waits for a reply over TCP).
REDIS_WARMUP = 200


def child(root: str, variant: str, requests: int, size: int, redis_port: int) -> None:
    """Run in the child: warm up, then serve ``requests`` hits of ``size`` bytes."""
    sys.path.insert(0, root)
    from twisted.logger import globalLogPublisher

    from tests.unit import fakes
    from tests.unit.fakes import FakeResponse, Harness, bucket_entry
    from yatagarasu.config.schema import LoggingConfig
    from yatagarasu.logs import make_observer

    logging = {"level": "info", "file": "/dev/null"} if variant == "info" else {"level": "warn"}
    cache: dict[str, object] = {
        "enabled": True,
        "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1},
    }
    if variant == "redis":
        from twisted.internet import reactor

        url = f"redis://127.0.0.1:{redis_port}/0"
        redis = {
            "enabled": True,
            "redis_url": url,
            "key_prefix": f"hit-callgrind-{os.getpid()}:",  # each run starts with a miss
            "timeout_ms": 60_000,  # under valgrind
        }
        cache = {"enabled": True, "cache_layers": ["redis"], "redis": redis}
        fakes.MemoryReactorClock = lambda: reactor  # type: ignore[attr-defined,misc]
    document: dict[str, object] = {
        "buckets": [bucket_entry()],
        "logging": logging,
        "cache": cache,
    }
    h = Harness(document)
    if variant == "info":
        globalLogPublisher.addObserver(make_observer(LoggingConfig(level="info", file="/dev/null")))
    access_log = getattr(h.assembly, "access_log", None)
    start = getattr(access_log, "startService", None)
    if start is not None:
        start()  # as twistd runs the generation's services (lines are batched while running)
    raw = b"GET /pub/k HTTP/1.1\r\nHost: proxy\r\nUser-Agent: wrk\r\n\r\n"
    answer = FakeResponse(200, {"Cache-Control": "max-age=100000"}, body=b"x" * size)
    if variant == "redis":
        channel, transport = h.connect()
        _redis_hits(h, channel, transport, raw, answer, REDIS_WARMUP + requests)
        return
    h.clock.advance(1_800_000_000)
    channel, transport = h.connect()
    channel.dataReceived(raw)
    h.agents["pub"].answer(answer)
    if b"X-Cache: MISS" not in transport.value():
        raise SystemExit("the first request was not a miss")
    for _ in range(WARMUP + requests):
        channel.dataReceived(raw)
        if len(transport.io.getvalue()) > 1 << 20:
            transport.clear()
    if b"X-Cache: HIT" not in transport.value():
        raise SystemExit("the hits were not hits")


def _redis_hits(h: Any, channel: Any, transport: Any, raw: bytes, answer: Any, hits: int) -> None:
    """The ``redis`` variant's miss, then ``hits`` hits, one at a time, on the real reactor."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    finished: list[Deferred[None]] = []
    request_done = channel.requestDone

    def done(request: Any) -> None:
        request_done(request)
        if finished:
            finished.pop().callback(None)

    channel.requestDone = done

    async def run() -> None:
        channel.dataReceived(raw)
        for _ in range(6000):  # the miss goes to Redis first (at most a minute, under valgrind)
            if h.agents["pub"].sent:
                break
            await deferLater(reactor, 0.01)
        else:
            raise SystemExit("the miss never reached the origin")
        h.agents["pub"].answer(answer)
        if b"X-Cache: MISS" not in transport.value():
            raise SystemExit("the first request was not a miss")
        await h.assembly.caching.cache.idle()  # the entry is in Redis
        for _ in range(hits):
            served: Deferred[None] = Deferred()
            finished.append(served)
            transport.clear()  # the last response is kept, for the check below
            channel.dataReceived(raw)
            await served
        if b"X-Cache: HIT" not in transport.value():
            raise SystemExit("the hits were not hits")

    failures: list[Any] = []
    d = Deferred.fromCoroutine(run())
    d.addErrback(failures.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        raise SystemExit(f"failed: {failures[0]}")


def instructions(root: Path, variant: str, requests: int, size: int, redis_port: int) -> int:
    """:returns: the instructions callgrind counted for a child serving ``requests`` hits."""
    python = root / ".venv" / "bin" / "python"
    argv = [str(python), str(REPO / "bench" / "hit_callgrind.py"), "--child", str(root), variant]
    options = ["--small", str(requests), "--size", str(size), "--redis-port", str(redis_port)]
    return callgrind_instructions([*argv, *options])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default="warn,info")
    parser.add_argument("--root", default=str(REPO), help="checkout to measure (its .venv)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4000)
    parser.add_argument("--size", type=int, default=1024, help="body size, bytes")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, default=0, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.small, a.size, a.redis_port)
        return
    root = Path(a.root)
    variants = a.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="hit-callgrind-") as workdir:
        server = None
        if "redis" in variants:
            sys.path.insert(0, str(REPO))
            from devharness.redis_server import RedisServer

            server = RedisServer(Path(workdir)).start()
        port = server.port if server is not None else 0
        try:
            for variant in variants:
                few = instructions(root, variant, a.small, a.size, port)
                many = instructions(root, variant, a.large, a.size, port)
                per = (many - few) / (a.large - a.small)
                print(f"{root} {variant} {a.size} B: {per:,.0f} instructions per hit", flush=True)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()

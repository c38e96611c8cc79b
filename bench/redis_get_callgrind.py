"""Instructions per Redis-layer lookup (``RedisCacheLayer.get`` of a stored entry, a hit),
counted by ``valgrind --tool=callgrind``: the Redis-specific part of a Redis hit (command
sent, reply read and parsed, value decoded) as a number that does not depend on the load of a
shared machine.

A private ``redis-server`` (``devharness``) holds one entry per size; the child, run under
callgrind, gets it over and over, one lookup at a time, on the real epoll reactor and TCP.
Each size runs twice, with ``--small`` and ``--large`` lookups after the same warm-up; the
difference of the two totals over the difference of the counts is the cost of one lookup.
redis-server's own instructions are not counted (another process).

Example (``--root`` another checkout, e.g. the code before a change; this ``.venv`` runs it)::

    .venv/bin/python bench/redis_get_callgrind.py --sizes 1024,102400
    .venv/bin/python bench/redis_get_callgrind.py --root /work/main
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchlib import callgrind_instructions

REPO = Path(__file__).resolve().parents[1]
WARMUP = 200


def child(root: str, port: int, size: int, lookups: int) -> None:
    """Run in the child: store one entry of ``size`` bytes, then look it up ``lookups`` times."""
    sys.path.insert(0, root)
    from twisted.internet import defer, reactor

    from yatagarasu.cache.redis import RedisCacheLayer, redis_settings
    from yatagarasu.values import CacheEntry, CacheKey

    settings = redis_settings(
        {"enabled": True, "redis_url": f"redis://127.0.0.1:{port}/0"}, "cache.redis"
    )
    layer = RedisCacheLayer(settings, reactor)
    key = CacheKey("bench", f"obj-{size}")
    headers = (
        (b"content-type", b"application/octet-stream"),
        (b"etag", b'"0123456789abcdef0123456789abcdef"'),
        (b"last-modified", b"Wed, 02 Dec 2026 10:00:00 GMT"),
        (b"accept-ranges", b"bytes"),
    )
    now = float(reactor.seconds())
    body = os.urandom(size)
    entry = CacheEntry(headers, body, now, now + 3600, now + 3600)

    async def run() -> None:
        await layer.set(key, entry)
        for _ in range(WARMUP + lookups):
            found = await layer.get(key)
            if found is None or len(found.body) != size:  # type: ignore[arg-type]
                raise SystemExit("not a hit")
            found.head_lines  # noqa: B018 -- a hit is served with its head lines
        await layer.close()

    failures: list[object] = []
    d = defer.Deferred.fromCoroutine(run())
    d.addErrback(failures.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        raise SystemExit(f"failed: {failures[0]}")


def instructions(root: Path, port: int, size: int, lookups: int) -> int:
    """:returns: the instructions callgrind counted for a child doing ``lookups`` lookups."""
    argv = [sys.executable, __file__, "--child", str(root), str(port), str(size), str(lookups)]
    return callgrind_instructions(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=str(REPO), help="checkout to measure")
    parser.add_argument("--sizes", default="1024,102400", help="body sizes, bytes")
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument(
        "--child", nargs=4, metavar=("ROOT", "PORT", "SIZE", "N"), help=argparse.SUPPRESS
    )
    a = parser.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
        return
    sys.path.insert(0, str(REPO))
    from devharness.redis_server import RedisServer

    root = Path(a.root)
    with tempfile.TemporaryDirectory(prefix="redis-callgrind-") as workdir:
        server = RedisServer(Path(workdir)).start()
        try:
            for size in (int(s) for s in a.sizes.split(",")):
                few = instructions(root, server.port, size, a.small)
                many = instructions(root, server.port, size, a.large)
                per = (many - few) / (a.large - a.small)
                print(f"{root} {size} B: {per:,.0f} instructions per lookup", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

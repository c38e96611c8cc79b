"""N slow HTTP clients reading one large object at a fixed rate each, for a bounded time.

Each client sends one ``GET`` and reads the body with a token bucket (``pause_reading`` /
``resume_reading`` on an asyncio transport), so the kernel receive window fills and the
server sees real backpressure.  After ``--duration`` seconds every connection is aborted.
Prints one JSON summary line (per-client status and bytes, aggregate throughput).

Usage::

    .venv/bin/python bench/slow_clients.py --url http://127.0.0.1:18082/bench/1g.bin \
        --clients 50 --rate 2M --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


def parse_rate(text: str) -> float:
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if text[-1].upper() in mult:
        return float(text[:-1]) * mult[text[-1].upper()]
    return float(text)


class SlowClient(asyncio.Protocol):
    def __init__(self, request: bytes, rate: float, loop: asyncio.AbstractEventLoop) -> None:
        self.request, self.rate, self.loop = request, rate, loop
        self.received = 0
        self.head = b""
        self.status = 0
        self.start = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = loop.create_future()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.start = self.loop.time()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            self.head = b""
        self.received += len(data)
        ahead = self.received / self.rate - (self.loop.time() - self.start)
        if ahead > 0.005 and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
            self.loop.call_later(ahead, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def run(url: str, clients: int, rate: float, duration: float) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: yatagarasu-bench-slow\r\nConnection: close\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    protos: list[SlowClient] = []
    t0 = time.monotonic()
    for _ in range(clients):
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: SlowClient(request, rate, loop), host, port), 10
        )
        protos.append(proto)
    await asyncio.sleep(max(0.0, duration - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    for p in protos:
        if p.transport is not None:
            p.transport.abort()
    await asyncio.wait([p.closed for p in protos], timeout=10)
    total = sum(p.received for p in protos)
    return {
        "clients": clients,
        "rate_per_client_bytes": rate,
        "seconds": round(elapsed, 2),
        "statuses": sorted({p.status for p in protos}),
        "bytes_total": total,
        "mib_s_total": round(total / elapsed / 1048576, 2),
        "mib_s_per_client_min": round(min(p.received for p in protos) / elapsed / 1048576, 3),
        "mib_s_per_client_max": round(max(p.received for p in protos) / elapsed / 1048576, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", default="2M", help="bytes/s per client (K/M/G suffixes)")
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.clients, parse_rate(args.rate), args.duration))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

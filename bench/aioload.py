"""An asyncio HTTP/1.1 keep-alive client for load tests: ``bench/conns10k.py`` (many
connections, closed loop) and ``bench/latency.py`` (open loop, fixed request schedule).

One :class:`Conn` per TCP connection, one request in flight on it at a time (no pipelining);
responses are framed by ``Content-Length`` (the proxy and the bare servers always send it).
Everything talks to 127.0.0.1; every wait is bounded by the callers' timeouts.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: called once per request: (HTTP status or 0 on a broken connection, response end time)
Done = Callable[[int, float], None]


def raise_nofile(wanted: int) -> int:
    """
    Raise this process' ``RLIMIT_NOFILE`` (children started afterwards inherit it).

    :param wanted: file descriptors needed.
    :returns: the soft limit now in force (the hard limit is raised too when allowed: root).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Conn(asyncio.Protocol):
    """One keep-alive connection; :meth:`send` one GET at a time."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._done: Done | None = None
        self._buf = bytearray()
        self._need = -1  # bytes of the whole response, once its head is parsed
        self._status = 0

    @property
    def busy(self) -> bool:
        return self._done is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, done: Done) -> None:
        """Write the request; ``done`` is called when the response has been read (or lost)."""
        assert self.transport is not None and self._done is None
        self._done = done
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[: end + 2]).lower()  # every header line ends with CRLF
            self._status = int(head[9:12])
            at = head.find(b"\ncontent-length:")
            length = int(head[at + 16 : head.find(b"\r", at + 16)]) if at >= 0 else 0
            self._need = end + 4 + length
        if len(buf) >= self._need:
            del buf[: self._need]
            self._need = -1
            done, self._done = self._done, None
            if done is not None:
                done(self._status, self.loop.time())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        done, self._done = self._done, None
        if done is not None:
            done(0, self.loop.time())

    def abort(self) -> None:
        self.closed = True
        self._done = None
        if self.transport is not None:
            self.transport.abort()


def get_request(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def connect(
    port: int, request: bytes, n: int, parallel: int, timeout: float
) -> tuple[list[Conn], list[str]]:
    """
    Open ``n`` connections to ``127.0.0.1:port``, at most ``parallel`` connecting at once.

    :param timeout: per connection attempt.
    :returns: the open connections and one error text per failed attempt.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)
    conns: list[Conn] = []
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                async with asyncio.timeout(timeout):
                    _, proto = await loop.create_connection(
                        lambda: Conn(request, loop), "127.0.0.1", port
                    )
                conns.append(proto)
            except (OSError, TimeoutError) as e:
                errors.append(type(e).__name__ + (f" {e.errno}" if isinstance(e, OSError) else ""))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, errors


@dataclass
class Latencies:
    """Seconds per request, plus the failures, for one measurement."""

    ok: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    timeouts: int = 0
    broken: int = 0

    def add(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 0:
            self.broken += 1
        else:
            self.ok.append(seconds)

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        return {
            "responses": len(self.ok),
            "timeouts": self.timeouts,
            "broken": self.broken,
            "statuses": dict(sorted(self.statuses.items())),
            "p50_ms": percentile_ms(self.ok, 50),
            "p95_ms": percentile_ms(self.ok, 95),
            "p99_ms": percentile_ms(self.ok, 99),
            "max_ms": round(1000 * max(self.ok), 2) if self.ok else float("nan"),
        }


def percentile_ms(values: Sequence[float], pct: float) -> float:
    """:returns: the ``pct`` percentile (inclusive method) in milliseconds, NaN when empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return round(1000 * values[0], 2)
    return round(
        1000 * statistics.quantiles(values, n=1000, method="inclusive")[int(pct * 10) - 1], 2
    )

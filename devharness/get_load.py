"""A bounded load of GETs from a few client threads over keep-alive connections.

Each client cycles through the paths, counts every response status and every connection error
(refused, reset, timed out, malformed), and stops when told to, after ``max_requests`` or after
``max_seconds``, whichever comes first: the load is bounded in count and in time. Paced when
given a ``rate``. Used by the reload-under-load test, ``bench/reload_under_load.py`` and
``bench/soak.py``.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter


class GetLoad:
    """
    :param address: the proxy's address (loopback).
    :param port: its port.
    :param paths: request targets, cycled through (each client starts at another one).
    :param clients: how many threads, each with its own connection.
    :param max_requests: per client.
    :param max_seconds: per client.
    :param rate: GETs per second of all clients together (each client paced at
        ``clients / rate`` seconds between starts); ``None``: as fast as the answers come.
    """

    def __init__(
        self,
        address: str,
        port: int,
        paths: list[str],
        *,
        clients: int = 4,
        max_requests: int = 20_000,
        max_seconds: float = 240.0,
        rate: float | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.paths = paths
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.interval = 0.0 if rate is None else clients / rate
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> GetLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def total(self) -> int:
        """Responses received so far."""
        with self._lock:
            return sum(self.statuses.values())

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: http.client.HTTPConnection | None = None
        due = time.monotonic()
        for n in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            path = self.paths[(index + n) % len(self.paths)]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.address, self.port, timeout=30)
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                with self._lock:
                    self.statuses[response.status] += 1
                if (response.getheader("Connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self._lock:
                    self.errors.append(f"{path}: {e!r}")
                if conn is not None:
                    conn.close()
                conn = None
            if self.interval:
                due += self.interval
                self._stop.wait(max(0.0, due - time.monotonic()))
        if conn is not None:
            conn.close()

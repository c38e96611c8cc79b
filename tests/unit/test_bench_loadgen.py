"""
``bench/loadgen.c``, the load generator the workers' benchmark can use instead of wrk: what it
counts must be what the server sent, since a verdict in docs/PERFORMANCE.md rests on it.

It is built with ``cc`` and run for one second at a time against a small threaded server in
this process, on 127.0.0.1; every assertion is on counts, none on time.
"""

from __future__ import annotations

import os
import shutil
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from benchlib import WrkResult, parse_wrk  # noqa: E402

BODY = bytes(range(256)) * 400  # 100 KiB, with NUL bytes in it


class Counting(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.responses = 0
        self.connections = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # loadgen's exit resets some
            super().handle_error(request, client_address)

    def count(self, responses: int = 0, connections: int = 0) -> None:
        with self.lock:
            self.responses += responses
            self.connections += connections


class Handler(socketserver.StreamRequestHandler):
    """
    ``/ok``: 200 with ``BODY``; ``/missing``: 404; ``/close``: ``Connection: close`` on every
    third response of a connection, then closed; ``/short``: half the body, then closed.
    """

    server: Counting

    def handle(self) -> None:
        self.server.count(connections=1)
        for served in range(1, 1_000_000):
            line = self.rfile.readline(4096)
            if not line:
                return
            path = line.split()[1].decode()
            while self.rfile.readline(4096) not in (b"\r\n", b""):
                pass
            status, body, last = b"200 OK", BODY, False
            if path == "/missing":
                status, body = b"404 Not Found", b"no such key"
            elif path == "/close":
                last = served % 3 == 0
            head = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body)
            if last:
                head += b"Connection: close\r\n"
            if path == "/short":
                self.wfile.write(head + b"\r\n" + body[: len(body) // 2])
                return
            self.server.count(responses=1)  # before it goes: the client cannot count it first
            self.wfile.write(head + b"\r\n" + body)
            if last:
                return


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler: apt-get install -y gcc libc6-dev")
        pytest.skip("no C compiler")
    binary = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(
        [cc, "-O2", "-Wall", "-Werror", "-o", str(binary), str(REPO / "bench" / "loadgen.c")],
        check=True,
        timeout=120,
    )
    return binary


@pytest.fixture
def server() -> Iterator[Counting]:
    srv = Counting()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def run(
    loadgen: Path, url: str, conns: int = 4
) -> tuple[WrkResult, subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [str(loadgen), "-c", str(conns), "-d", "1", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return parse_wrk(done.stdout), done


def test_counts_every_response_the_server_sent(loadgen: Path, server: Counting) -> None:
    port = server.server_address[1]
    result, done = run(loadgen, f"http://127.0.0.1:{port}/ok")
    assert done.returncode == 0, done.stderr
    assert result.errors == 0 and result.non2xx == 0, done.stdout
    assert result.requests > 0
    # at the deadline, each connection may have a response on its way that it never read
    assert server.responses - 4 <= result.requests <= server.responses
    assert server.connections == 4
    assert result.p50_ms <= result.p99_ms
    assert result.rps > 0


def test_opens_the_connection_again_after_connection_close(loadgen: Path, server: Counting) -> None:
    port = server.server_address[1]
    result, done = run(loadgen, f"http://127.0.0.1:{port}/close")
    assert result.errors == 0, done.stdout
    assert result.requests >= 3
    assert server.connections >= result.requests // 3
    assert server.responses - 4 <= result.requests <= server.responses


def test_counts_error_statuses(loadgen: Path, server: Counting) -> None:
    port = server.server_address[1]
    result, done = run(loadgen, f"http://127.0.0.1:{port}/missing", conns=2)
    assert result.requests > 0
    assert result.non2xx == result.requests, done.stdout


def test_a_body_cut_short_is_a_read_error_not_a_response(loadgen: Path, server: Counting) -> None:
    port = server.server_address[1]
    result, done = run(loadgen, f"http://127.0.0.1:{port}/short", conns=2)
    assert result.requests == 0, done.stdout
    assert result.errors > 0
    assert "read" in done.stdout


def test_loads_loopback_addresses_only(loadgen: Path) -> None:
    done = subprocess.run(
        [str(loadgen), "-c", "1", "-d", "1", "http://10.0.0.1:80/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr

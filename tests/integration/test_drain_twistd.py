"""
SIGTERM drain through the real twistd: every in-flight download arrives byte for byte.

The clients are raw sockets with a small ``SO_RCVBUF``, so that a slow reader really holds the
rest of the response in the proxy's buffers when the signal arrives. Every wait is bounded by a
socket timeout and a count; no assertion is about how long something took.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devharness.certificates import write_self_signed
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.proxy_config import write_config
from devharness.twistd import ProxyProcess, clean_exit, twistd_command
from devharness.waiting import wait_until

#: small enough that the kernel buffers on the client side hold little of a response
RECEIVE_BUFFER = 16 * 1024
#: seconds any single socket operation may block before the test fails
SOCKET_TIMEOUT = 30.0


class RawDownload:
    """
    One ``GET`` on its own connection, read at the pace the test chooses.

    :param port: the proxy's port.
    :param path: the request target.
    :param keep_alive: send an HTTP/1.1 request without ``Connection: close``.
    :param tls: speak TLS (``localhost``) with this context.
    """

    def __init__(
        self, port: int, path: str, *, keep_alive: bool = True, tls: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connect(): the window the client announces depends on it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.settimeout(SOCKET_TIMEOUT)
        try:
            sock.connect((LOOPBACK, port))
            self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="localhost")
        except OSError:
            sock.close()
            raise
        connection = b"" if keep_alive else b"Connection: close\r\n"
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: proxy\r\n%s\r\n" % (path.encode(), connection))
        self.head = b""
        self.body = bytearray()
        self.status = 0
        self.length = -1
        self.closed = False

    def read_head(self) -> None:
        """Read the status line and headers (bounded by a count of reads)."""
        data = b""
        for _ in range(1000):
            if b"\r\n\r\n" in data:
                break
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed before the headers: {data!r}"
            data += chunk
        self.head, _, rest = data.partition(b"\r\n\r\n")
        lines = self.head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value)
        self.body += rest

    def read(self, limit: int, pause: float = 0.0) -> None:
        """
        Read until the body has ``limit`` bytes, the whole body arrived, or the peer closed.

        :param limit: body bytes wanted in total.
        :param pause: seconds to sleep after each ``recv`` (a slow reader).
        """
        for _ in range(1_000_000):
            if len(self.body) >= min(limit, self.length) or self.closed:
                return
            chunk = self.sock.recv(RECEIVE_BUFFER)
            if not chunk:
                self.closed = True
                return
            self.body += chunk
            if pause:
                time.sleep(pause)
        raise AssertionError("read loop ran out of iterations")

    def read_to_end(self, pause: float = 0.0) -> None:
        """Read the rest of the body, then wait for the proxy to close the connection."""
        self.read(self.length, pause)
        if not self.closed:
            self.closed = self.sock.recv(1) == b""

    def close(self) -> None:
        """Close the client socket."""
        self.sock.close()


def _digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _start(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    **server: Any,
) -> ProxyProcess:
    config = make_proxy_config({"pub": s3_bucket})
    config["server"].update(server)
    return proxy(config)


def _assert_clean_shutdown(running: ProxyProcess) -> None:
    code = running.wait(timeout=60)
    assert clean_exit(code), code
    log = running.log_text()
    assert "shutdown complete" in log
    assert "aborted" not in log


@pytest.mark.parametrize("probe_ready", [False, True], ids=["alone", "with_ready_probe"])
def test_slow_reader_gets_every_byte_after_sigterm(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    probe_ready: bool,
) -> None:
    body = os.urandom(8 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "large.bin", body)
    running = _start(
        proxy,
        make_proxy_config,
        s3_bucket,
        shutdown_delay_seconds=2 if probe_ready else 0,
        shutdown_grace_seconds=120,
    )
    download = RawDownload(running.port, "/pub/large.bin")
    try:
        download.read_head()
        assert (download.status, download.length) == (200, len(body))
        download.read(1024 * 1024)
        running.send_signal(signal.SIGTERM)
        if probe_ready:

            def shutting_down() -> bool:
                ready = running.get("/ready", timeout=5)
                return ready.status == 503 and ready.json()["status"] == "shutting_down"

            wait_until(shutting_down, timeout=10, what="/ready to report shutting_down")
        # Slow enough that the download outlives shutdown_delay_seconds.
        download.read_to_end(pause=0.01)
    finally:
        download.close()
    assert len(download.body) == len(body)
    assert _digest(download.body) == _digest(body)
    assert download.closed
    _assert_clean_shutdown(running)


def test_stalled_reader_resumes_and_idle_keep_alive_closes_at_once(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = os.urandom(8 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "stall.bin", body)
    moto_s3.put_object(s3_bucket, "small.txt", b"small\n")
    running = _start(proxy, make_proxy_config, s3_bucket, shutdown_grace_seconds=120)
    idle = RawDownload(running.port, "/pub/small.txt")
    download = RawDownload(running.port, "/pub/stall.bin")
    try:
        idle.read_head()
        idle.read(idle.length)
        assert (idle.status, bytes(idle.body), idle.closed) == (200, b"small\n", False)
        download.read_head()
        download.read(1024 * 1024)
        running.send_signal(signal.SIGTERM)
        # The download cannot finish while its client does not read, so the idle keep-alive
        # connection being closed now proves it is not kept until the downloads end.
        assert idle.sock.recv(1) == b""
        time.sleep(3)  # the stall (not measured)
        assert running.is_running()
        download.read_to_end()
    finally:
        idle.close()
        download.close()
    assert _digest(download.body) == _digest(body)
    assert download.closed
    _assert_clean_shutdown(running)


def test_concurrent_downloads_during_sigterm_are_all_complete(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    bodies = [os.urandom(1024 * 1024 + i * 4099) for i in range(20)]
    for i, body in enumerate(bodies):
        moto_s3.put_object(s3_bucket, f"c{i}.bin", body)
    running = _start(proxy, make_proxy_config, s3_bucket, shutdown_grace_seconds=120)
    downloads = [RawDownload(running.port, f"/pub/c{i}.bin") for i in range(len(bodies))]
    try:
        for download in downloads:
            download.read_head()
            download.read(64 * 1024)
        running.send_signal(signal.SIGTERM)
        with ThreadPoolExecutor(max_workers=len(downloads)) as pool:
            list(pool.map(lambda d: d.read_to_end(pause=0.001), downloads))
    finally:
        for download in downloads:
            download.close()
    assert [d.status for d in downloads] == [200] * len(bodies)
    assert [_digest(d.body) for d in downloads] == [_digest(b) for b in bodies]
    assert all(d.closed for d in downloads)
    _assert_clean_shutdown(running)


def test_slow_reader_over_tls_gets_every_byte_after_sigterm(
    tmp_path: Path,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    """The TLS listener wraps the site: its connections are drained the same way."""
    body = os.urandom(8 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "tls.bin", body)
    port = free_port()
    config = make_proxy_config({"pub": s3_bucket}, port=port)
    cert_path, key_path = write_self_signed(tmp_path)
    config["server"].update(
        shutdown_grace_seconds=120, tls={"cert_path": str(cert_path), "key_path": str(key_path)}
    )
    path = write_config(config, tmp_path / "tls.yaml")
    context = ssl.create_default_context(cafile=str(cert_path))
    log_path = tmp_path / "tls.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            twistd_command("-n", "--pidfile=", "yatagarasu", "--config", str(path)),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def serving() -> bool:
            try:
                probe = RawDownload(port, "/health", tls=context)
            except OSError:
                return False
            try:
                probe.read_head()
                return probe.status == 200
            finally:
                probe.close()

        wait_until(serving, timeout=30, what="the HTTPS listener")
        download = RawDownload(port, "/pub/tls.bin", tls=context)
        try:
            download.read_head()
            download.read(1024 * 1024)
            process.send_signal(signal.SIGTERM)
            download.read_to_end(pause=0.001)
        finally:
            download.close()
        assert _digest(download.body) == _digest(body)
        assert download.closed
        code = process.wait(timeout=60)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert clean_exit(code), code
    text = log_path.read_text(errors="replace")
    assert "shutdown complete" in text
    assert "aborted" not in text


@pytest.mark.parametrize("destination", ["json_file", "default_stdout"])
def test_every_access_line_is_written_by_the_end_of_a_sigterm(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    tmp_path: Path,
    destination: str,
) -> None:
    """
    Access lines are written in batches (to ``logging.file``, or to twistd's standard output
    with the ``logging`` section left out): none is lost when the process stops.
    """
    moto_s3.put_object(s3_bucket, "small.txt", b"small\n")
    body = os.urandom(4 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "large.bin", body)
    access = tmp_path / "access.log"
    config = make_proxy_config({"pub": s3_bucket})
    config["server"]["shutdown_grace_seconds"] = 120
    if destination == "json_file":
        config["logging"] = {"format": "json", "file": str(access)}
    running = proxy(config)
    ids = [running.get("/pub/small.txt").header("x-request-id") for _ in range(120)]
    download = RawDownload(running.port, "/pub/large.bin")
    try:
        download.read_head()
        running.send_signal(signal.SIGTERM)  # lines of the last second are still held
        download.read_to_end()
    finally:
        download.close()
    assert len(download.body) == len(body)
    assert clean_exit(running.wait(timeout=60))
    if destination == "default_stdout":
        log = running.log_text()
        assert "shutdown complete" in log and "aborted" not in log
        small = " [yatagarasu.access#info] 127.0.0.1 GET /pub/small.txt 200 6B "
        large = f" [yatagarasu.access#info] 127.0.0.1 GET /pub/large.bin 200 {len(body)}B "
        assert [line.count(small) for line in log.splitlines()].count(1) == 120
        assert sum(large in line for line in log.splitlines()) == 1
        return
    assert "shutdown complete" in access.read_text()  # logging.file holds every line
    heads = dict(
        line.lower().split(": ", 1) for line in download.head.decode("latin-1").split("\r\n")[1:]
    )
    records = [json.loads(line) for line in access.read_text().split("\x1e") if line]
    logged = [
        r["request_id"]
        for r in records
        if r["log_namespace"] == "yatagarasu.access" and r["path"].startswith("/pub/")
    ]
    assert sorted(logged) == sorted([*ids, heads["x-request-id"]])
    assert len(set(logged)) == len(logged) == 121

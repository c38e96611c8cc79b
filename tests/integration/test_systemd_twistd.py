"""``Type=notify`` through the real twistd: the datagrams systemd would receive, in order."""

from __future__ import annotations

import http.client
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.proxy_config import write_config
from devharness.twistd import clean_exit, launch_proxy


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""
    path = str(tmp_path / "n")
    assert len(path.encode()) < 100, path  # sun_path holds 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()


def receive(sock: socket.socket, timeout: float = 30.0) -> str:
    """:returns: the next datagram; :raises TimeoutError: when none arrives in ``timeout``."""
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def fields(datagram: str) -> dict[str, str]:
    """:returns: the ``VARIABLE=value`` lines of a notification."""
    return dict(line.split("=", 1) for line in datagram.splitlines())


def accepts(port: int) -> bool:
    """:returns: whether a TCP connection to the proxy's port succeeds now."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=5).close()
    except OSError:
        return False
    return True


def test_ready_when_listening_then_stopping_at_drain(
    tmp_path: Path,
    notify_socket: tuple[str, socket.socket],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    path, sock = notify_socket
    body = b"d" * (16 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "slow.bin", body)
    port = free_port()
    config = make_proxy_config({"pub": s3_bucket}, port=port)
    config["server"]["address"] = LOOPBACK
    running = launch_proxy(config, tmp_path, {"NOTIFY_SOCKET": path})
    try:
        ready = receive(sock)
        # Checked as soon as READY=1 arrives, without waiting for /health first.
        assert accepts(port), running.log_text()
        assert fields(ready) == {
            "READY": "1",
            "STATUS": f"serving 1 bucket(s) on http://{LOOPBACK}:{port}",
            "MAINPID": str(running.pid),
        }
        assert running.get("/health").status == 200

        # A slow client keeps the drain (and so the process) going while we look.
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        conn.request("GET", "/pub/slow.bin")
        response = conn.getresponse()
        assert response.status == 200
        first = response.read(64 * 1024)
        running.send_signal(signal.SIGTERM)
        stopping = receive(sock)
        assert running.is_running()
        assert fields(stopping) == {
            "STOPPING": "1",
            "STATUS": "draining 1 request(s), 1 connection(s)",
        }
        assert receive(sock) == (
            "STATUS=not listening; waiting up to 30s for 1 connection(s) to close\n"
        )
        assert running.is_running()
        assert first + response.read() == body
        conn.close()
        assert receive(sock) == "STATUS=shutdown complete\n"
        assert clean_exit(running.wait(timeout=60))
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)  # nothing after the last status
    finally:
        running.kill()


def test_reloading_then_ready_around_a_reload(
    tmp_path: Path,
    notify_socket: tuple[str, socket.socket],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    path, sock = notify_socket
    config = make_proxy_config({"pub": s3_bucket}, port=free_port())
    running = launch_proxy(config, tmp_path, {"NOTIFY_SOCKET": path})
    config_path = running.config_path
    try:
        assert fields(receive(sock))["READY"] == "1"
        config["buckets"].append(dict(config["buckets"][0], name="two", path_prefix="/two"))
        write_config(config, config_path)
        running.send_signal(signal.SIGHUP)
        reloading = fields(receive(sock))
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert reloading["STATUS"] == "reloading the configuration"
        assert fields(receive(sock)) == {
            "READY": "1",
            "STATUS": "serving 2 bucket(s), generation 2",
        }
        config["buckets"][1]["bogus"] = True
        write_config(config, config_path)
        running.send_signal(signal.SIGHUP)
        assert fields(receive(sock))["RELOADING"] == "1"
        assert fields(receive(sock)) == {
            "READY": "1",
            "STATUS": "serving 2 bucket(s), generation 2 (last reload failed:"
            " buckets[1].bogus: unknown key)",
        }
        running.send_signal(signal.SIGTERM)
        assert fields(receive(sock))["STOPPING"] == "1"
        assert clean_exit(running.wait(timeout=60))
    finally:
        running.kill()

"""
``server.socket_activation`` through the real twistd: the test binds the socket, passes it as
fd 3 with ``$LISTEN_FDS`` and ``$LISTEN_PID`` as systemd does (a shell sets ``LISTEN_PID=$$``
and ``exec``s twistd, which keeps the pid), and the proxy serves on it without binding.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.http_client import http_request
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK
from devharness.processes import child_env
from devharness.proxy_config import write_config
from devharness.twistd import check_config, clean_exit, run_twistd, twistd_command
from devharness.waiting import wait_until
from tests.integration.test_cache_twistd import MEMORY, config


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(64)
    yield sock
    sock.close()


#: the tiny wrapper: fd 3 and the variables set as systemd does, then exec (same pid)
_WRAPPER = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1';"
    " os.environ['LISTEN_FDNAMES'] = 'yatagarasu.socket';"
    " os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
)


def _activated(sock: socket.socket, config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """twistd with ``sock`` as fd 3, ``LISTEN_FDS=1`` and ``LISTEN_PID`` = its own pid."""
    argv = twistd_command("-n", "--pidfile=", "yatagarasu", "--config", str(config_path))
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, str(sock.fileno()), *argv],
            pass_fds=(sock.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config_path.parent,
            env=child_env(None),
        )


def _serve(document: dict[str, Any], sock: socket.socket, tmp_path: Path) -> tuple[Any, Path]:
    port = sock.getsockname()[1]
    document["server"] = {
        **document.get("server", {}),
        "address": LOOPBACK,
        "port": port,
        "socket_activation": True,
    }
    path = write_config(document, tmp_path / "activated.yaml")
    log = tmp_path / "activated.log"
    return _activated(sock, path, log), log


def test_serves_on_the_socket_systemd_passed(
    tmp_path: Path, moto_s3: MotoS3Server, s3_bucket: str, listening: socket.socket
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"activated")
    document = config(moto_s3, s3_bucket, MEMORY)
    process, log = _serve(document, listening, tmp_path)
    url = f"http://{LOOPBACK}:{listening.getsockname()[1]}"
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")
            return http_request("GET", url + "/ready", timeout=5).status == 200

        wait_until(ready, timeout=30, what="the socket-activated proxy")
        listening.close()  # from now on only the proxy's copy listens
        response = http_request("GET", url + "/pub/a.txt", timeout=10)
        assert (response.status, response.body) == (200, b"activated")
        process.terminate()
        code = process.wait(timeout=60)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert clean_exit(code), code
    text = log.read_text(errors="replace")
    assert "cannot listen" not in text and "socket_activation" not in text


def test_without_a_socket_from_systemd_start_up_fails(
    tmp_path: Path, moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    document = config(moto_s3, s3_bucket, MEMORY)
    document["server"] = {"address": LOOPBACK, "port": 0, "socket_activation": True}
    path = write_config(document, tmp_path / "no-socket.yaml")
    result = run_twistd(["-n", "--pidfile=", "yatagarasu", "--config", str(path)], tmp_path)
    assert result.returncode == 1, result.output
    assert "server.socket_activation: systemd passed no socket for the proxy listener" in (
        result.output
    )


def test_a_socket_on_another_port_is_refused(
    tmp_path: Path, moto_s3: MotoS3Server, s3_bucket: str, listening: socket.socket
) -> None:
    document = config(moto_s3, s3_bucket, MEMORY)
    document["server"] = {"address": LOOPBACK, "port": 1, "socket_activation": True}
    path = write_config(document, tmp_path / "other-port.yaml")
    process = _activated(listening, path, tmp_path / "other-port.log")
    code = process.wait(timeout=60)
    text = (tmp_path / "other-port.log").read_text(errors="replace")
    assert code == 1, text
    assert "server.socket_activation: the proxy socket from systemd is bound to" in text


def test_socket_activation_with_workers_is_refused(
    tmp_path: Path, moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    document = config(moto_s3, s3_bucket, MEMORY)
    document["server"] = {"workers": 2, "socket_activation": True}
    result = check_config(document, tmp_path)
    assert result.returncode == 1
    assert "server.socket_activation: not supported yet with server.workers > 1" in result.output

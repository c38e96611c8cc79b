"""
The audit trail through the real ``twistd -n yatagarasu`` against moto: one JSON line per
request (lines == requests, ids == the responses' ``X-Request-ID``), flushed at SIGTERM after
the drain, a client that disconnects mid-body recorded with the bytes it was sent, no token in
any byte the sinks or the log wrote, rotation by size, and SIGUSR1 reopening the file.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess, clean_exit
from devharness.waiting import wait_until

SECRET = "integration-secret-" + "x" * 40
BIG = 4 * 1024 * 1024


def read_records(directory: Path) -> list[dict[str, Any]]:
    path = directory / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def every_byte(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def disconnect_mid_body(port: int, path: str) -> int:
    """GET ``path``, read the head and a little of the body, then reset the connection."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(30)
    sock.connect((LOOPBACK, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    data = b""
    for _ in range(1000):
        if b"\r\n\r\n" in data and len(data) > 64 * 1024:
            break
        data += sock.recv(16 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return len(data)


def test_one_line_per_request_redacted_flushed_at_sigterm(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "hello.txt", b"hello world\n")
    moto_s3.put_object(s3_bucket, "big.bin", b"b" * BIG)
    audit_dir = tmp_path / "audit" / "nested"
    sources = [{"type": "query", "name": "token"}, {"type": "bearer"}]
    config = make_proxy_config(
        [
            bucket_config(moto_s3, "pub", s3_bucket),
            bucket_config(moto_s3, "private", s3_bucket, auth={"enabled": True}),
        ],
        jwt={"secret": SECRET, "token_sources": sources},
        audit_log={
            "enabled": True,
            "outputs": ["file"],
            # Long enough that only the shutdown flush writes: the lines prove it ran.
            "file": {"path": str(audit_dir / "audit.log"), "flush_interval_seconds": 3600},
        },
    )
    running = proxy(config)
    token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 3600}, SECRET, "HS256")
    wrong = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.WRONG-SIGNATURE-SECRET"
    sent: dict[str, tuple[str, int]] = {}

    def send(path: str, *headers: tuple[str, str], method: str = "GET") -> None:
        response = running.request(method, path, headers=list(headers))
        request_id = response.header("x-request-id")
        assert request_id is not None
        sent[request_id] = (path.split("?")[0], response.status)

    for i in range(40):
        send(f"/pub/hello.txt?n={i}")
    for _ in range(5):
        send("/pub/missing.txt")
        send("/pub/hello.txt", method="DELETE")
        send("/private/hello.txt")
        send(f"/private/hello.txt?token={token}&signature=QUERY-SIGNATURE-SECRET")
        send("/private/hello.txt", ("Authorization", f"Bearer {token}"))
        send("/private/hello.txt", ("Authorization", f"Bearer {wrong}"))
        send("/pub/hello.txt", ("Referer", "https://app/?access_token=REFERER-SECRET"))
        send("/admin/cache/stats")
        send("/ready")
    received = disconnect_mid_body(running.port, "/pub/big.bin")
    wait_until(
        lambda: "/pub/big.bin" in running.log_text(), timeout=30, what="the aborted download"
    )
    assert read_records(audit_dir) == []  # nothing flushed yet: the interval is an hour
    assert clean_exit(running.stop(signal.SIGTERM))

    records = read_records(audit_dir)
    ours = [r for r in records if r["request_path"] != "/health"]  # start-up polled /health
    by_id = {r["correlation_id"]: r for r in ours}
    big = [r for r in ours if r["request_path"] == "/pub/big.bin"]
    assert len(ours) == len(sent) + 1 == len(by_id)
    for request_id, (path, status) in sent.items():
        assert (by_id[request_id]["request_path"], by_id[request_id]["response_status"]) == (
            path,
            status,
        )
    [aborted] = big
    assert aborted["response_status"] == 200
    assert received - 1024 <= aborted["response_size_bytes"] < BIG
    statuses = sorted({status for _, status in sent.values()})
    assert statuses == [200, 401, 403, 404, 405]
    users = {r["user"] for r in ours if r["response_status"] == 200 and r["bucket"] == "private"}
    assert users == {"carol"}
    written = every_byte(audit_dir) + running.log_text().encode()  # stopped: all written
    for secret in (token, wrong, "QUERY-SIGNATURE-SECRET", "REFERER-SECRET", "WRONG-SIGNATURE"):
        assert secret.encode() not in written
    assert b"access_token=[REDACTED]" in every_byte(audit_dir)


def test_rotation_by_size_and_sigusr1_reopen(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    audit_dir = tmp_path / "audit"
    file_section = {
        "path": str(audit_dir / "audit.log"),
        "max_file_size_mb": 0.002,  # 2 KiB: a few lines per file
        "max_backup_files": 3,
        "batch_records": 1,
        "flush_interval_seconds": 0.1,
    }
    config = make_proxy_config(
        {"pub": s3_bucket},
        audit_log={"enabled": True, "outputs": ["file"], "skip_probes": True, "file": file_section},
    )
    running = proxy(config)
    ids = [running.get(f"/nowhere/{i}").header("x-request-id") for i in range(30)]
    wait_until(lambda: ids[-1] in every_byte(audit_dir).decode(), timeout=30, what="the last line")
    backups = sorted(p.name for p in audit_dir.iterdir() if p.name != "audit.log")
    assert len(backups) == 3
    assert all(re.fullmatch(r"audit\.log\.\d{8}T\d{6}Z(-\d+)?", name) for name in backups)
    kept = [r["correlation_id"] for r in read_records(audit_dir)]
    assert kept[-1] == ids[-1]
    assert (audit_dir / "audit.log").stat().st_size <= 2 * 1024 * 1.05

    moved = audit_dir / "rotated-by-logrotate.log"
    (audit_dir / "audit.log").rename(moved)
    running.send_signal(signal.SIGUSR1)
    running.wait_for_log("SIGUSR1 received: reopening the audit sinks")
    after = running.get("/nowhere/after-reopen").header("x-request-id")
    assert after is not None
    wait_until(
        lambda: (
            after in (audit_dir / "audit.log").read_text()
            if (audit_dir / "audit.log").exists()
            else False
        ),
        timeout=30,
        what="the line after the reopen",
    )
    assert after not in moved.read_text()
    assert running.is_running()
    assert clean_exit(running.stop(signal.SIGTERM))


def test_a_pip_installed_third_party_sink_beside_the_file_sink(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"abc")
    csv_path = tmp_path / "audit.csv"
    config = make_proxy_config(
        {"pub": s3_bucket},
        audit_log={
            "enabled": True,
            "outputs": ["csv", "file"],
            "skip_probes": True,
            "csv": {"path": str(csv_path), "fields": ["correlation_id", "response_status"]},
            "file": {"path": str(tmp_path / "audit" / "audit.log")},
        },
    )
    running = proxy(config)
    expected = []
    for path in ("/pub/a.txt", "/pub/none.txt", "/nowhere"):
        response = running.get(path)
        expected.append(f"{response.header('x-request-id')},{response.status}")
    assert clean_exit(running.stop(signal.SIGTERM))
    assert csv_path.read_text().splitlines() == expected
    records = read_records(tmp_path / "audit")
    from_file = [f"{r['correlation_id']},{r['response_status']}" for r in records]
    assert from_file == expected

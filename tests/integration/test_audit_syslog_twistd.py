"""
The ``syslog`` audit sink through the real ``twistd -n yatagarasu``, to receivers of the
test's own on 127.0.0.1: UDP datagrams, TCP and TLS streams with octet-counting framing, every
message parsed as RFC 5424 (PRI from facility and status class, the JSON record as MSG). Over
TCP, records sent while the receiver is not up yet wait in the queue and arrive once the
``ClientService`` has reconnected.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devharness.certificates import write_self_signed
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.twistd import ProxyProcess, clean_exit
from devharness.waiting import wait_until

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\d+) audit"
    r' (?P<sd>\[audit@32473 correlation_id="[^"]*" status="\d+"\]) (?P<msg>\{.*\})$',
    re.DOTALL,
)
LOCAL3 = 19


class Receiver:
    """A syslog receiver on 127.0.0.1 (UDP, TCP or TLS), collecting messages in a thread."""

    def __init__(self, protocol: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.protocol = protocol
        self.port = port
        self._tls = tls
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        self._closing = False
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, port))
        self._sock.settimeout(0.5)
        if protocol != "udp":
            self._sock.listen(8)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._closing:
            try:
                if self.protocol == "udp":
                    data, _ = self._sock.recvfrom(65535)
                    self._add([data])
                    continue
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._read_stream, args=(conn,), daemon=True).start()

    def _read_stream(self, conn: socket.socket) -> None:
        if self._tls is not None:
            conn.settimeout(10)
            conn = self._tls.wrap_socket(conn, server_side=True)
        conn.settimeout(0.5)
        buffer = b""
        with conn:
            while not self._closing:
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                frames, buffer = split_octet_counted(buffer)
                self._add(frames)

    def _add(self, frames: list[bytes]) -> None:
        with self._lock:
            self.messages.extend(frames)

    def parsed(self) -> list[re.Match[str]]:
        with self._lock:
            messages = list(self.messages)
        matches = [RFC5424.match(m.decode("utf-8")) for m in messages]
        assert all(m is not None for m in matches), messages
        return [m for m in matches if m is not None]

    def close(self) -> None:
        self._closing = True
        self._sock.close()


def split_octet_counted(buffer: bytes) -> tuple[list[bytes], bytes]:
    """RFC 6587 §3.4.1: ``<length> <message>`` frames; returns the complete ones and the rest."""
    frames = []
    while b" " in buffer:
        length, _, rest = buffer.partition(b" ")
        assert length.isdigit(), buffer[:40]
        size = int(length)
        if len(rest) < size:
            break
        frames.append(rest[:size])
        buffer = rest[size:]
    return frames, buffer


@pytest.mark.parametrize("protocol", ["udp", "tcp", "tls"])
def test_records_reach_a_syslog_receiver(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    protocol: str,
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"abc")
    port = free_port()
    section: dict[str, Any] = {
        "address": f"{LOOPBACK}:{port}",
        "protocol": protocol,
        "facility": "local3",
        "hostname": "proxy-under-test",
        "flush_interval_seconds": 0.1,
    }
    context = None
    if protocol == "tls":
        cert, key = write_self_signed(tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        section["tls"] = {"ca_cert_path": str(cert), "server_name": "localhost"}
    # Over UDP a datagram sent before the receiver is up is lost: that one starts first.
    receiver = Receiver(protocol, port, context) if protocol == "udp" else None
    config = make_proxy_config(
        {"pub": s3_bucket},
        audit_log={"enabled": True, "outputs": ["syslog"], "skip_probes": True, "syslog": section},
    )
    try:
        running = proxy(config)
        sent = []
        for path in ("/pub/a.txt", "/pub/missing.txt", "/nowhere", "/pub/a.txt"):
            response = running.get(path)
            sent.append((response.header("x-request-id"), response.status))
        if receiver is None:  # TCP/TLS: queued until the ClientService reconnects
            receiver = Receiver(protocol, port, context)
        wait_until(
            lambda: len(receiver.messages) >= len(sent) if receiver else False,
            timeout=60,
            what=f"{len(sent)} syslog messages over {protocol}",
        )
        assert clean_exit(running.stop(signal.SIGTERM))
        parsed = receiver.parsed()
        records = [json.loads(m["msg"]) for m in parsed]
        assert [(r["correlation_id"], r["response_status"]) for r in records] == sent
        assert [status for _, status in sent] == [200, 404, 404, 200]
        for message, (_, status) in zip(parsed, sent, strict=True):
            assert int(message["pri"]) == LOCAL3 * 8 + (6 if status < 400 else 4)
            assert (message["host"], message["app"]) == ("proxy-under-test", "yatagarasu")
            assert message["proc"] == str(running.pid)
    finally:
        if receiver is not None:
            receiver.close()

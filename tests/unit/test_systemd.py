"""The systemd notifier against real unix datagram sockets, and what ProxyService sends."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher

from tests.unit.fakes import bucket_entry
from yatagarasu.assembly import assemble
from yatagarasu.config import parse_config
from yatagarasu.service import ProxyService
from yatagarasu.systemd import SystemdNotifier, socket_address


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def pending(sock: socket.socket) -> list[str]:
    """:returns: the datagrams waiting on ``sock``, without waiting for more."""
    received = []
    sock.setblocking(False)
    try:
        for _ in range(100):
            received.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return received


def test_one_datagram_of_lines(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.notify("READY=1", "STATUS=serving")
    assert notifier.notify("STOPPING=1")
    assert pending(sock) == ["READY=1\nSTATUS=serving\n", "STOPPING=1\n"]
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"yatagarasu-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(b"\0" + name.encode())
        notifier = SystemdNotifier(f"@{name}")
        assert notifier.notify("READY=1")
        assert pending(sock) == ["READY=1\n"]
        notifier.close()
    finally:
        sock.close()


def test_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"
    for bad in ("relative/path", "@", "vsock:2:1234"):
        with pytest.raises(ValueError, match="unsupported NOTIFY_SOCKET"):
            socket_address(bad)


def test_unset_sends_nothing() -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}):
        notifier = SystemdNotifier.from_environ(environ)
        assert not notifier.enabled
        assert not notifier.notify("READY=1")


def test_failure_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        notifier = SystemdNotifier(str(tmp_path / "nobody-listens"))
        assert not notifier.notify("READY=1")
        assert not notifier.notify("STOPPING=1")
        assert not notifier.enabled
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if e.get("log_namespace") == "yatagarasu.systemd"]
    assert len(warnings) == 1
    assert warnings[0]["notify_socket"] == str(tmp_path / "nobody-listens")


def test_a_full_socket_does_not_block(receiver: tuple[str, socket.socket]) -> None:
    path, _ = receiver
    notifier = SystemdNotifier(path)
    sent = 0
    # Nobody reads: the receive queue fills and sendto fails with EAGAIN instead of waiting.
    for _ in range(100_000):
        if not notifier.notify("STATUS=" + "x" * 1000):
            break
        sent += 1
    assert 0 < sent < 100_000
    assert not notifier.enabled


def test_proxy_service_ready_then_stopping(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    config = parse_config(
        {"buckets": [bucket_entry()], "server": {"port": 8080, "shutdown_grace_seconds": 7}}, {}
    )
    reactor = MemoryReactorClock()
    service = ProxyService(reactor, assemble(config, reactor), SystemdNotifier(path))
    service.privilegedStartService()
    assert pending(sock) == []  # bound, not started yet
    service.startService()
    assert reactor.tcpServers[0][0] == 8080
    assert pending(sock) == [
        f"READY=1\nSTATUS=serving 1 bucket(s) on http://{config.server.host}:8080\nMAINPID={os.getpid()}\n"
    ]
    channel = service.site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    stopped = service.stopService()
    assert pending(sock) == [
        "STOPPING=1\nSTATUS=draining 0 request(s), 1 connection(s)\n",
        "STATUS=not listening; waiting up to 7s for 1 connection(s) to close\n",
    ]
    reactor.advance(8)
    reactor.advance(2)
    assert stopped.called
    assert pending(sock) == ["STATUS=shutdown complete\n"]

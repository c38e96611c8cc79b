"""
The ``syslog`` audit sink on a fake reactor: RFC 5424 messages (PRI from facility and status
class, header fields, structured data, the JSON record), octet-counting framing, the
``audit_log.syslog`` section, and the TCP connection kept by a ``ClientService``: records
wait in a bounded queue while disconnected, dropped ones are counted, reconnects back off.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.unit.fakes import bucket_entry
from yatagarasu.assembly import assemble
from yatagarasu.audit.syslog import SyslogSink, parse_address
from yatagarasu.audit.syslog_format import SyslogFormatter, octet_counted, severity
from yatagarasu.config import parse_config
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink
from yatagarasu.plugins.audit_syslog import syslog

#: RFC 5424 §6: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+)"
    r' (?P<sd>-|\[(?:[^\]\\"]|\\.|"(?:[^"\\]|\\.)*")*\]) (?P<msg>.*)$',
    re.DOTALL,
)


def parse_frames(data: bytes) -> list[re.Match[str]]:
    """Split an octet-counted stream (RFC 6587 §3.4.1) and parse every RFC 5424 message."""
    messages = []
    while data:
        length, _, rest = data.partition(b" ")
        size = int(length)
        messages.append(rest[:size])
        data = rest[size:]
    parsed = [RFC5424.match(m.decode("utf-8")) for m in messages]
    assert all(p is not None for p in parsed), messages
    return [p for p in parsed if p is not None]


def record(status: int, n: int = 0) -> Any:
    from yatagarasu.values import AuditRecord

    return AuditRecord(
        1.25, f"id-{n}", "::1", "u", "b", "k", "GET", "/b/k", status, 3, 1.5, "miss", 'a"]', None
    )


@pytest.mark.parametrize(
    ("status", "expected"), [(200, 6), (304, 6), (401, 4), (404, 4), (502, 3), (503, 3)]
)
def test_severity_from_the_status_class(status: int, expected: int) -> None:
    assert severity(status) == expected


def test_message_fields() -> None:
    formatter = SyslogFormatter(16, "proxy host", "yatagarasu", "4242")
    [parsed] = parse_frames(octet_counted(formatter.message(record(503, 7))))
    assert parsed["pri"] == str(16 * 8 + 3)
    assert parsed["ts"] == "1970-01-01T00:00:01.250Z"
    assert (parsed["host"], parsed["app"], parsed["proc"], parsed["msgid"]) == (
        "proxyhost",
        "yatagarasu",
        "4242",
        "audit",
    )
    assert parsed["sd"] == '[audit@32473 correlation_id="id-7" status="503"]'
    body = json.loads(parsed["msg"])
    assert (body["correlation_id"], body["user_agent"]) == ("id-7", 'a"]')


def test_octet_counting_counts_bytes_not_characters() -> None:
    assert octet_counted("é".encode()) == b"2 \xc3\xa9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5514", ("127.0.0.1", 5514)),
        ("[::1]:6514", ("::1", 6514)),
        ("[::1]", ("::1", 514)),
        ("logs.example", ("logs.example", 514)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, 514, "x") == expected


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ({}, "audit_log.syslog.address", "is required"),
        ({"address": "h:99999"}, "audit_log.syslog.address", "expected host:port"),
        ({"address": "h:1", "protocol": "rfc3164"}, "audit_log.syslog.protocol", "one of"),
        ({"address": "h:1", "facility": "local9"}, "audit_log.syslog.facility", "local0"),
        ({"address": "h:1", "tls": {}}, "audit_log.syslog.tls", "only with protocol: tls"),
        (
            {"address": "h:1", "protocol": "tls", "tls": {"ca_cert_path": "/nonexistent"}},
            "audit_log.syslog.tls.ca_cert_path",
            "cannot load",
        ),
    ],
)
def test_bad_sections(section: dict[str, Any], path: str, message: str) -> None:
    document = {
        "buckets": [bucket_entry()],
        "audit_log": {"enabled": True, "outputs": ["syslog"], "syslog": section},
    }
    with pytest.raises(ConfigError) as info:
        assemble(parse_config(document, {}), MemoryReactorClock())
    assert info.value.path == path
    assert message in info.value.message


def test_seed_spellings_and_numeric_facility() -> None:
    settings = {"syslog_address": "127.0.0.1:1", "syslog_protocol": "tcp", "syslog_facility": 13}
    sink = syslog.build(settings, "audit_log.syslog", MemoryReactorClock())
    assert (sink.settings.protocol, sink.settings.facility_code) == ("tcp", 13)


def connect(reactor: MemoryReactorClock, index: int = -1) -> tuple[Any, StringTransport]:
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_tcp_queue_while_disconnected_then_send_framed_and_reconnect_with_backoff() -> None:
    reactor = MemoryReactorClock()
    settings = {"address": "127.0.0.1:5514", "protocol": "tcp", "max_queue_records": 3}
    sink = syslog.build(settings, "audit_log.syslog", reactor)
    assert isinstance(sink, SyslogSink) and verifyObject(IAuditSink, sink)
    [service] = sink.services()
    service.startService()
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 5514)]
    for n in range(5):
        sink.write(record(200, n))
    reactor.advance(1)
    assert (sink.queued, sink.counts["dropped"]) == (3, 2)
    protocol, transport = connect(reactor)
    reactor.advance(0.2)
    frames = parse_frames(transport.value())
    assert [json.loads(f["msg"])["correlation_id"] for f in frames] == ["id-0", "id-1", "id-2"]
    assert sink.counts == {"written": 3, "failed": 0, "dropped": 2}

    protocol.connectionLost(Failure(ConnectionLost()))
    sink.write(record(404, 9))
    reactor.advance(0.2)
    assert sink.queued == 1  # kept while disconnected
    attempts = len(reactor.tcpClients)
    reactor.advance(60)  # the ClientService's backoff has retried by then
    assert len(reactor.tcpClients) > attempts
    _, again = connect(reactor)
    reactor.advance(0.2)
    [frame] = parse_frames(again.value())
    assert frame["pri"] == str(16 * 8 + 4)
    assert sink.counts["written"] == 4


def test_stopping_sends_the_rest_or_counts_it_dropped(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    sink = syslog.build({"address": "127.0.0.1:1", "protocol": "tcp"}, "s", reactor)
    [service] = sink.services()
    service.startService()
    _, transport = connect(reactor)
    sink.write(record(200, 1))
    service.stopService()
    assert [json.loads(f["msg"])["correlation_id"] for f in parse_frames(transport.value())] == [
        "id-1"
    ]
    offline = syslog.build({"address": "127.0.0.1:1", "protocol": "tcp"}, "s", reactor)
    [service] = offline.services()
    service.startService()
    offline.write(record(200, 2))
    service.stopService()
    assert offline.counts == {"written": 0, "failed": 0, "dropped": 1}

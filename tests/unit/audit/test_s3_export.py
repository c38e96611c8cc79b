"""
The ``s3`` audit sink on a fake clock: batches cut on the interval, when full and at stop,
named ``yatagarasu-audit-YYYY-MM-DD-HH-MM-SS-<instance>.jsonl[.gz]``, spooled before they are
uploaded and removed only after a 200, retried with exponential backoff, a bounded spool, the
spool picked up at start, metrics, the ``audit_log.s3_export`` section, and the signed PUT.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from tests.unit.fakes import FakeAgent, FakeResponse, Harness, bucket_entry
from yatagarasu import plugins
from yatagarasu.assembly import assemble
from yatagarasu.audit.file import run_now
from yatagarasu.audit.s3_export import S3ExportSettings, S3Sink
from yatagarasu.config import parse_config
from yatagarasu.config.schema import S3Config
from yatagarasu.discovery import available
from yatagarasu.errors import ConfigError, UpstreamError
from yatagarasu.interfaces import IAuditSinkFactory
from yatagarasu.s3.client import S3Client
from yatagarasu.values import AuditRecord

#: 2026-12-02T10:20:30Z
T0 = 1796206830.0


def record(n: int) -> AuditRecord:
    return AuditRecord(
        T0, f"id-{n}", "127.0.0.1", None, "b", "k", "GET", "/b/k", 200, 1, 0.1, "hit", None, None
    )


class FakeS3:
    """Answers each upload with the next scripted result (a status, or an exception)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.script: list[int | Exception] = []
        self.held: list[Deferred[tuple[int, str | None]]] = []
        self.hold = False
        self.closed = False

    def put(self, key: str, body: bytes, digest: str) -> Deferred[tuple[int, str | None]]:
        assert digest == hashlib.sha256(body).hexdigest()
        self.calls.append((key, body))
        if self.hold:
            d: Deferred[tuple[int, str | None]] = Deferred()
            self.held.append(d)
            return d
        result = self.script.pop(0) if self.script else 200
        if isinstance(result, Exception):
            raise result
        return succeed((result, None if result == 200 else "InternalError"))

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def ids(self) -> list[str]:
        out = []
        for key, body in self.calls:
            text = gzip.decompress(body) if key.endswith(".gz") else body
            out += [json.loads(line)["correlation_id"] for line in text.decode().splitlines()]
        return out


class Ones:
    """A jitter source that always gives the top of the range (so delays are exact)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_sink(
    tmp_path: Path, clock: MemoryReactorClock, s3: FakeS3, start: bool = True, **settings: Any
) -> S3Sink:
    values: dict[str, Any] = {
        "bucket": "audit",
        "spool_dir": str(tmp_path / "spool"),
        "instance": "node-1",
        "export_interval_seconds": 60.0,
    }
    values.update(settings)
    sink = S3Sink(S3ExportSettings(**values), clock, run_now, s3.put, s3.close, Ones())  # type: ignore[arg-type]
    if start:
        for service in sink.services():
            service.startService()
    return sink


def spooled(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "spool").iterdir())


def clock_at(t: float = T0) -> MemoryReactorClock:
    clock = MemoryReactorClock()
    clock.advance(t)
    return clock


def capture() -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    return events


# --- batches -------------------------------------------------------------------------------


def test_a_batch_every_interval_named_by_time_and_instance_then_removed_after_200(
    tmp_path: Path,
) -> None:
    clock, s3 = clock_at(), FakeS3()
    s3.hold = True
    sink = make_sink(tmp_path, clock, s3, path_prefix="logs/")
    for n in range(3):
        sink.write(record(n))
    clock.advance(59)
    assert s3.calls == [] and spooled(tmp_path) == []
    clock.advance(1)  # 10:21:30
    name = "yatagarasu-audit-2026-12-02-10-21-30-node-1.jsonl"
    assert [key for key, _ in s3.calls] == ["logs/" + name]
    assert spooled(tmp_path) == [name]  # on disk before S3 has it
    assert sink.spool_files == 1 and sink.spool_bytes == len(s3.calls[0][1])
    assert s3.ids() == ["id-0", "id-1", "id-2"]
    s3.held[0].callback((200, None))
    assert spooled(tmp_path) == [] and sink.spool_files == 0 and sink.spool_bytes == 0
    assert sink.counts == {"written": 3, "failed": 0, "dropped": 0}
    clock.advance(60)
    assert len(s3.calls) == 1  # nothing queued: no empty batch


def test_a_full_batch_is_cut_at_once_and_same_second_names_do_not_collide(
    tmp_path: Path,
) -> None:
    clock, s3 = clock_at(), FakeS3()
    sink = make_sink(tmp_path, clock, s3, max_batch_records=500)
    for n in range(1000):
        sink.write(record(n))
    stamp = "2026-12-02-10-20-30"
    assert [key for key, _ in s3.calls] == [
        f"yatagarasu-audit-{stamp}-node-1.jsonl",
        f"yatagarasu-audit-{stamp}-node-1-2.jsonl",
    ]
    assert s3.ids() == [f"id-{n}" for n in range(1000)]


def test_compressed_batches_are_gzip(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    sink = make_sink(tmp_path, clock, s3, compress=True)
    sink.write(record(7))
    clock.advance(60)
    [(key, body)] = s3.calls
    assert key.endswith("-node-1.jsonl.gz")
    assert json.loads(gzip.decompress(body))["correlation_id"] == "id-7"


# --- failures and backoff ------------------------------------------------------------------


def test_failed_uploads_back_off_exponentially_and_keep_the_batch(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    s3.script = [
        UpstreamError(502, "cannot connect to S3", retryable=True),
        500,
        403,
        UpstreamError(504, "slow", retryable=True),
    ]
    events = capture()
    try:
        sink = make_sink(
            tmp_path,
            clock,
            s3,
            retry_initial_backoff_seconds=1.0,
            retry_max_backoff_seconds=4.0,
        )
        sink.write(record(1))
        clock.advance(60)
        attempts_at = [len(s3.calls)]
        for step in (0.99, 0.01, 1.99, 0.01, 3.99, 0.01, 3.99, 0.01):  # 1, 2, 4, then 4 (cap)
            clock.advance(step)
            attempts_at.append(len(s3.calls))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert attempts_at == [1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert sink.upload_failures == 4
    assert sink.counts["written"] == 1 and spooled(tmp_path) == []
    failures = [e for e in events if "upload of" in e.get("log_format", "")]
    assert [e["problem"] for e in failures] == [
        "cannot connect to S3",
        "S3 answered 500 InternalError",
        "S3 answered 403 InternalError",
        "slow",
    ]


def test_a_full_spool_drops_the_new_batch_and_counts_it(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    s3.script = [503] * 100
    events = capture()
    try:
        sink = make_sink(tmp_path, clock, s3, max_spool_mb=0.0003)  # 314 bytes: one record
        sink.write(record(1))
        clock.advance(60)
        sink.write(record(2))
        sink.write(record(3))
        clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sink.spool_files == 1 and len(spooled(tmp_path)) == 1
    assert sink.counts == {"written": 0, "failed": 0, "dropped": 2}
    assert any("the spool is full" in e.get("log_format", "") for e in events)


def test_a_spool_write_error_counts_the_records_failed(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    (tmp_path / "spool").write_text("a file where the directory should be")
    sink = make_sink(tmp_path, clock, s3)
    sink.write(record(1))
    clock.advance(60)
    assert sink.counts == {"written": 0, "failed": 1, "dropped": 0}
    assert s3.calls == []


# --- stop and start ------------------------------------------------------------------------


def test_stop_cuts_the_last_batch_and_uploads_it(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    sink = make_sink(tmp_path, clock, s3)
    sink.write(record(1))
    [service] = sink.services()
    stopped = service.stopService()
    assert stopped.called and s3.closed
    assert s3.ids() == ["id-1"] and spooled(tmp_path) == []


def test_stop_with_s3_down_leaves_the_spool_and_the_next_start_sends_it(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    s3.script = [UpstreamError(502, "down", retryable=True)] * 3
    sink = make_sink(tmp_path, clock, s3)
    sink.write(record(1))
    clock.advance(60)  # the first batch fails, waits for its backoff
    sink.write(record(2))
    [service] = sink.services()
    stopped = service.stopService()
    assert stopped.called  # one more try each, no backoff at shutdown
    assert len(spooled(tmp_path)) == 2 and sink.counts["written"] == 0
    (tmp_path / "spool" / ".tmp-yatagarasu-audit-cut-off.jsonl").write_bytes(b'{"half')

    again, s3_up = FakeS3(), clock
    sink2 = make_sink(tmp_path, s3_up, again)
    assert again.ids() == ["id-1", "id-2"]  # oldest first
    assert spooled(tmp_path) == []
    assert sink2.counts["written"] == 2


def test_stop_gives_up_after_the_shutdown_timeout(tmp_path: Path) -> None:
    clock, s3 = clock_at(), FakeS3()
    s3.hold = True
    sink = make_sink(tmp_path, clock, s3, shutdown_timeout_seconds=5.0)
    sink.write(record(1))
    [service] = sink.services()
    stopped = service.stopService()
    assert not stopped.called
    clock.advance(5)
    assert stopped.called and s3.closed
    assert len(spooled(tmp_path)) == 1


# --- metrics and configuration -------------------------------------------------------------


def s3_section(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "outputs": ["s3"],
        "s3_export": {
            "s3_bucket": "audit",
            "s3_path_prefix": "audit/",
            "endpoint": "http://127.0.0.1:9000",
            "access_key": "AKIDEXAMPLE",
            "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "spool_dir": str(tmp_path / "spool"),
            "export_interval_seconds": 1,
            **extra,
        },
    }


def test_the_s3_sink_is_a_plugin_configured_with_the_seed_spellings(tmp_path: Path) -> None:
    assert "s3" in available(IAuditSinkFactory, plugins)
    h = Harness({"buckets": [bucket_entry()], "audit_log": s3_section(tmp_path)})
    assert h.assembly.audit is not None
    [sink] = h.assembly.audit.sinks
    assert isinstance(sink, S3Sink)
    assert (sink.settings.bucket, sink.settings.path_prefix) == ("audit", "audit/")
    scrape = h.assembly.metrics.render().decode()
    assert 'yatagarasu_audit_spool_files{sink="s3"} 0.0' in scrape
    assert 'yatagarasu_audit_spool_bytes{sink="s3"} 0.0' in scrape
    assert 'yatagarasu_audit_upload_failures_total{sink="s3"} 0.0' in scrape


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        ({"spool_dir": ""}, "audit_log.s3_export.spool_dir", "must not be empty"),
        ({"endpoint": "ftp://x"}, "audit_log.s3_export.endpoint", "expected http(s)"),
        ({"secret_key": ""}, "audit_log.s3_export.secret_key", "go together"),
        ({"instance": "a/b"}, "audit_log.s3_export.instance", "expected 1-64"),
        ({"s3_path_prefix": "/x"}, "audit_log.s3_export.path_prefix", "must not start"),
        ({"export_interval_seconds": 0}, "audit_log.s3_export.export_interval_seconds", "> 0"),
        ({"max_spool_mb": -1}, "audit_log.s3_export.max_spool_mb", "> 0"),
        ({"retry_max_backoff_seconds": 0.5}, "audit_log.s3_export.retry_max_backoff_seconds", ""),
        ({"bukket": "x"}, "audit_log.s3_export.bukket", "did you mean 'bucket'"),
    ],
)
def test_bad_s3_export_values_name_the_dotted_path(
    tmp_path: Path, extra: dict[str, Any], path: str, message: str
) -> None:
    config = parse_config(
        {"buckets": [bucket_entry()], "audit_log": s3_section(tmp_path, **extra)}, {}
    )
    with pytest.raises(ConfigError) as info:
        assemble(config, MemoryReactorClock())
    assert info.value.path == path
    assert message in info.value.message


def test_the_s3_sink_is_refused_with_several_workers(tmp_path: Path) -> None:
    config = parse_config(
        {"buckets": [bucket_entry()], "audit_log": s3_section(tmp_path), "server": {"workers": 2}},
        {},
    )
    with pytest.raises(ConfigError) as info:
        assemble(config, MemoryReactorClock())
    assert info.value.path == "audit_log.outputs[0]"
    assert "one spool directory per process" in info.value.message


# --- the signed PUT ------------------------------------------------------------------------


class Collect:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_put_signs_the_payload_hash_and_sends_the_body() -> None:
    clock, agent = clock_at(), FakeAgent()
    config = S3Config(
        bucket="audit",
        endpoint="http://127.0.0.1:9000",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )
    client = S3Client(clock, config, agent=agent)
    body = b'{"correlation_id":"x"}\n'
    headers = Headers({b"content-type": [b"application/x-ndjson"]})
    result: list[tuple[int, str | None]] = []
    Deferred.fromCoroutine(client.put("logs/a b.jsonl", body, headers)).addCallback(result.append)
    [sent] = agent.sent
    assert (sent.method, sent.uri) == (b"PUT", b"http://127.0.0.1:9000/audit/logs/a%20b.jsonl")
    sha = hashlib.sha256(body).hexdigest().encode()
    assert sent.headers.getRawHeaders(b"x-amz-content-sha256") == [sha]
    [authorization] = sent.headers.getRawHeaders(b"authorization") or [b""]
    assert authorization.startswith(b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert sent.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
    collected = Collect()
    assert sent.body_producer.length == len(body)
    sent.body_producer.startProducing(collected)
    assert collected.data == body
    agent.answer(FakeResponse(200, body=b""))
    assert result == [(200, None)]


def test_put_reports_the_s3_error_code() -> None:
    clock, agent = clock_at(), FakeAgent()
    client = S3Client(
        clock, S3Config(bucket="audit", endpoint="http://127.0.0.1:9000"), agent=agent
    )
    result: list[tuple[int, str | None]] = []
    Deferred.fromCoroutine(client.put("k", b"x", Headers())).addCallback(result.append)
    error = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
    agent.answer(FakeResponse(403, body=error))
    assert result == [(403, "AccessDenied")]


def test_the_secret_key_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    settings = S3ExportSettings(
        bucket="audit", spool_dir=str(tmp_path), access_key="AKID", secret_key="SECRET-VALUE"
    )
    assert "SECRET-VALUE" not in repr(settings) and "AKID" in repr(settings)

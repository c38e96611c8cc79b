"""
The audit trail on a fake clock: the ``audit_log`` section and its plugins, one record per
request whatever its outcome (fields, correlation id, user, bytes sent, duration including the
transfer, disconnects), redaction, and the file sink (buffering, flush, rotation, reopen,
write errors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu import plugins
from yatagarasu.assembly import assemble
from yatagarasu.audit.file import FileSink, FileSinkSettings, run_now
from yatagarasu.audit.record import REDACTED, redact_query, rfc3339, to_dict, to_json
from yatagarasu.audit.rotating_file import RotatingFile
from yatagarasu.config import parse_config
from yatagarasu.discovery import available
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink, IAuditSinkFactory
from yatagarasu.tap import summary
from yatagarasu.values import AuditRecord

SECRET = "s" * 64
#: exactly the DESIGN.md §3 fields, in order
FIELDS = [
    "timestamp",
    "correlation_id",
    "client_ip",
    "user",
    "bucket",
    "object_key",
    "http_method",
    "request_path",
    "response_status",
    "response_size_bytes",
    "duration_ms",
    "cache_status",
    "user_agent",
    "referer",
]
DAY = 86400.0
#: services started by a test, stopped (closing their files) after it
RUNNING: list[Any] = []


@pytest.fixture(autouse=True)
def _stop_services() -> Any:
    yield
    while RUNNING:
        RUNNING.pop().stopService()


def audited(tmp_path: Path, **audit: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True,
        "outputs": ["file"],
        "file": {"path": str(tmp_path / "logs" / "audit.log"), "flush_interval_seconds": 1},
    }
    section.update(audit)
    return section


def harness(tmp_path: Path, *buckets: dict[str, Any], **document: Any) -> Harness:
    document.setdefault("audit_log", audited(tmp_path))
    h = Harness({"buckets": list(buckets) or [bucket_entry()], **document})
    for service in h.assembly.services:
        service.startService()
        RUNNING.append(service)
    return h


def lines(h: Harness, tmp_path: Path) -> list[dict[str, Any]]:
    h.clock.advance(1)
    path = tmp_path / "logs" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def build_error(tmp_path: Path, audit_log: Any) -> ConfigError:
    config = parse_config({"buckets": [bucket_entry()], "audit_log": audit_log}, {})
    with pytest.raises(ConfigError) as info:
        assemble(config, MemoryReactorClock())
    return info.value


# --- the audit_log section -------------------------------------------------------------------


def test_builtin_sinks_are_plugins() -> None:
    assert "file" in available(IAuditSinkFactory, plugins)


@pytest.mark.parametrize(
    ("audit_log", "path", "message"),
    [
        ({"enabled": True}, "audit_log.outputs", "at least one output"),
        ({"enabled": True, "outputs": ["s3"]}, "audit_log.s3_export.bucket", "is required"),
        ({"s3_export": {"bucket": "b"}}, "audit_log.s3_export", "not in audit_log.outputs"),
        ({"outputs": ["file"], "s3": {}}, "audit_log.s3", "unknown key"),
        ({"outputs": ["kafka"]}, "audit_log.outputs[0]", "unknown IAuditSinkFactory 'kafka'"),
        ({"outputs": ["file", "file"]}, "audit_log.outputs[1]", "listed twice"),
        ({"file": {"path": "/x"}}, "audit_log.file", "not in audit_log.outputs"),
        ({"outputs": ["file"]}, "audit_log.file.path", "is required"),
        ({"outputs": ["file"], "file": {"path": "/x", "bogus": 1}}, "audit_log.file.bogus", ""),
        (
            {"outputs": ["file"], "file": {"path": "/x", "max_file_size_mb": 0}},
            "audit_log.file.max_file_size_mb",
            "must be > 0",
        ),
        (
            {"outputs": ["file"], "file": {"path": "/x", "rotation_policy": "hourly"}},
            "audit_log.file.rotation_policy",
            "must be one of",
        ),
        ({"outputs": ["file"], "enabld": True}, "audit_log.enabld", "did you mean 'enabled'"),
    ],
)
def test_bad_sections_name_the_dotted_path(
    tmp_path: Path, audit_log: Any, path: str, message: str
) -> None:
    error = build_error(tmp_path, audit_log)
    assert error.path == path
    assert message in error.message


def test_disabled_builds_no_trail_but_still_validates(tmp_path: Path) -> None:
    h = Harness(
        {
            "buckets": [bucket_entry()],
            "audit_log": {"outputs": ["file"], "file": {"file_path": str(tmp_path / "a.log")}},
        }
    )
    assert h.assembly.audit is None
    assert h.site.audit is None
    assert h.assembly.services == []


def test_seed_file_path_spelling_and_rust_output_alias(tmp_path: Path) -> None:
    section = {"enabled": True, "output": ["file"], "file": {"file_path": str(tmp_path / "a")}}
    h = harness(tmp_path, audit_log=section)
    assert h.assembly.audit is not None
    sink = h.assembly.audit.sinks[0]
    assert isinstance(sink, FileSink)
    assert sink.settings.path == str(tmp_path / "a")


# --- one record per request ----------------------------------------------------------------


def test_record_fields_of_a_served_object(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.clock.advance(1_764_648_000.25)  # 2025-12-02T04:00:00.250Z
    _, transport = h.get("/pub/dir/a.txt?x=1", "User-Agent: curl/8", "Referer: https://ex.com/p")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "5"}, b"hello"))
    response = parse_response(transport.value())
    [record] = lines(h, tmp_path)
    assert list(record) == FIELDS
    assert record == {
        "timestamp": "2025-12-02T04:00:00.250Z",
        "correlation_id": response.header("x-request-id"),
        "client_ip": "127.0.0.1",
        "user": None,
        "bucket": "pub",
        "object_key": "dir/a.txt",
        "http_method": "GET",
        "request_path": "/pub/dir/a.txt",
        "response_status": 200,
        "response_size_bytes": 5,
        "duration_ms": 0.0,
        "cache_status": None,
        "user_agent": "curl/8",
        "referer": "https://ex.com/p",
    }


def test_every_outcome_is_recorded_once(tmp_path: Path) -> None:
    buckets = [
        bucket_entry(),
        bucket_entry("blocked", "/blocked", ip_filter={"blocklist": ["127.0.0.1"]}),
        bucket_entry("private", "/private", auth={"enabled": True}),
    ]
    h = harness(tmp_path, *buckets, jwt={"secret": SECRET})
    sent: list[tuple[int, str | None]] = []

    def get(
        target: str, *headers: str, method: str = "GET", upstream: FakeResponse | None = None
    ) -> None:
        _, transport = h.get(target, *headers, method=method)
        if upstream is not None:
            h.agents["pub"].answer(upstream)
        response = parse_response(transport.value())
        sent.append((response.status, response.header("x-request-id")))

    get("/health")
    get("/ready")
    get("/metrics")
    get("/admin/cache/stats")  # no admin auth configured: 403
    get("/nowhere")  # 404
    get("/pub/k", method="DELETE")  # 405
    get("/blocked/k")  # 403
    get("/private/k")  # 401
    get("/private/k", "Authorization: Bearer not-a-jwt")  # 401 invalid_token
    get("/pub/k", "If-None-Match: x", upstream=FakeResponse(304, {}, b""))
    get("/pub/missing", upstream=FakeResponse(404, {"Content-Type": "application/xml"}, b"<E/>"))
    get("/pub/broken", upstream=FakeResponse(500, {}, b""))
    records = lines(h, tmp_path)
    got = [(r["response_status"], r["correlation_id"]) for r in records]
    assert got == sent
    assert [s for s, _ in sent] == [200, 200, 200, 403, 404, 405, 403, 401, 401, 304, 404, 502]
    assert len({cid for _, cid in sent}) == len(sent)
    assert [r["bucket"] for r in records[6:9]] == ["blocked", "private", "private"]
    assert all(r["user"] is None for r in records)


def test_user_is_the_jwt_subject(tmp_path: Path) -> None:
    h = harness(tmp_path, bucket_entry(auth={"enabled": True}), jwt={"secret": SECRET})
    token = pyjwt.encode({"sub": "alice", "exp": 3600}, SECRET, algorithm="HS256")
    h.get("/pub/k", f"Authorization: Bearer {token}")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, b"x"))
    [record] = lines(h, tmp_path)
    assert (record["user"], record["response_status"]) == ("alice", 200)


def test_requests_refused_while_parsed_are_recorded(tmp_path: Path) -> None:
    h = harness(tmp_path, server={"security_limits": {"max_header_size": 100}})
    big = b"X-Big: " + b"a" * 200 + b"\r\n"
    _, transport = h.send(b"GET /pub/k?token=t HTTP/1.1\r\nHost: p\r\n" + big)
    response = parse_response(transport.value())
    [record] = lines(h, tmp_path)
    assert record["response_status"] == response.status == 431
    assert record["correlation_id"] == response.header("x-request-id")
    assert (record["http_method"], record["request_path"]) == ("GET", "/pub/k")
    assert record["response_size_bytes"] == len(response.body)


def test_duration_includes_the_transfer_and_a_disconnect_records_what_was_sent(
    tmp_path: Path,
) -> None:
    h = harness(tmp_path)
    channel, _ = h.get("/pub/big")
    upstream = FakeResponse(200, {"Content-Length": "10"}, None, length=10)
    h.agents["pub"].answer(upstream)
    upstream.push(b"abcd")
    h.clock.advance(0.25)
    assert lines(h, tmp_path) == []  # not ended yet (the flush above wrote nothing)
    channel.connectionLost(Failure(ConnectionDone()))
    [record] = lines(h, tmp_path)
    assert record["response_size_bytes"] == 4
    assert record["duration_ms"] == 1250.0  # 0.25 s of transfer + the 1 s lines() waited
    assert record["response_status"] == 200


def test_complete_transfer_duration(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.get("/pub/big")
    upstream = FakeResponse(200, {"Content-Length": "6"}, None, length=6)
    h.agents["pub"].answer(upstream)
    upstream.push(b"abc")
    h.clock.advance(0.5)
    upstream.push(b"def")
    upstream.end()
    [record] = lines(h, tmp_path)
    assert (record["response_size_bytes"], record["duration_ms"]) == (6, 500.0)


def test_probes_can_be_left_out(tmp_path: Path) -> None:
    h = harness(tmp_path, audit_log=audited(tmp_path, skip_probes=True))
    for path in ("/health", "/ready", "/metrics", "/nowhere"):
        h.get(path)
    assert [r["request_path"] for r in lines(h, tmp_path)] == ["/nowhere"]


# --- redaction -------------------------------------------------------------------------------


def test_tokens_never_reach_a_record_or_the_log(tmp_path: Path) -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sources = [{"type": "query", "name": "token"}, {"type": "bearer"}]
        jwt_section = {"secret": SECRET, "token_sources": sources}
        h = harness(tmp_path, bucket_entry(auth={"enabled": True}), jwt=jwt_section)
        token = pyjwt.encode({"sub": "bob", "exp": 3600}, SECRET, algorithm="HS256")
        h.get(f"/pub/a?token={token}&signature=SIG-SECRET")
        h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, b"x"))
        h.get("/pub/b", f"Authorization: Bearer {token}", "Referer: /x?access_token=REF-SECRET")
        h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, b"x"))
        h.get("/pub/c", "Authorization: Bearer WRONG-SECRET")
        records = lines(h, tmp_path)
    finally:
        globalLogPublisher.removeObserver(events)
    written = (tmp_path / "logs" / "audit.log").read_text()
    logged = repr(events)
    for secret in (token, "SIG-SECRET", "REF-SECRET", "WRONG-SECRET"):
        assert secret not in written
        assert secret not in logged
    assert [r["response_status"] for r in records] == [200, 200, 401]
    assert records[1]["referer"] == f"/x?access_token={REDACTED}"
    assert records[1]["user"] == "bob"


def test_configured_sensitive_headers_are_redacted(tmp_path: Path) -> None:
    section = audited(tmp_path, redact_headers=["User-Agent", "Referer", "X-Api-Key"])
    h = harness(tmp_path, audit_log=section)
    h.get("/nowhere", "User-Agent: secret-agent", "Referer: https://intranet/secret-page")
    [record] = lines(h, tmp_path)
    assert (record["user_agent"], record["referer"]) == (REDACTED, REDACTED)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a/b?x=1&token=t&jwt=j", f"https://a/b?x=1&token={REDACTED}&jwt={REDACTED}"),
        (
            "/p?X-Amz-Signature=s&X-Amz-Credential=c&page=2",
            f"/p?X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}&page=2",
        ),
        ("/p?api_key=k&password=p", f"/p?api_key={REDACTED}&password={REDACTED}"),
        ("/p?q=token", "/p?q=token"),
        ("/p#access_token=t", "/p"),
        ("/plain", "/plain"),
    ],
)
def test_redact_query(url: str, expected: str) -> None:
    assert redact_query(url) == expected


def test_json_escapes_what_could_break_a_line() -> None:
    record = AuditRecord(
        0.0, "id", "::1", None, None, None, "GET", "/a", 200, 0, 0.0, None, 'x"\n{}', None
    )
    text = to_json(record)
    assert "\n" not in text
    assert json.loads(text)["user_agent"] == 'x"\n{}'
    assert rfc3339(1.5) == "1970-01-01T00:00:01.500Z"


# --- the file sink ---------------------------------------------------------------------------


def record(n: int, when: float = 0.0) -> AuditRecord:
    return AuditRecord(
        when, f"id-{n}", "127.0.0.1", None, "b", "k", "GET", "/b/k", 200, 1, 0.1, "hit", None, None
    )


def file_sink(tmp_path: Path, clock: MemoryReactorClock, **settings: Any) -> FileSink:
    parsed = FileSinkSettings(path=str(tmp_path / "d" / "audit.log"), **settings)
    sink = FileSink(parsed, clock, run_now)
    for service in sink.services():
        service.startService()
        RUNNING.append(service)
    return sink


def read_ids(path: Path) -> list[str]:
    return [json.loads(line)["correlation_id"] for line in path.read_text().splitlines()]


def test_buffered_until_the_interval_or_a_full_batch(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    sink = file_sink(tmp_path, clock, flush_interval_seconds=2.0, batch_records=3)
    path = tmp_path / "d" / "audit.log"
    sink.write(record(1))
    clock.advance(1.9)
    assert not path.exists()  # directory and file are created by the first flush
    clock.advance(0.1)
    assert read_ids(path) == ["id-1"]
    for n in (2, 3, 4):
        sink.write(record(n))
    assert read_ids(path) == ["id-1", "id-2", "id-3", "id-4"]  # the batch filled: written
    assert sink.counts == {"written": 4, "failed": 0, "dropped": 0}


def test_stopping_flushes_and_the_queue_is_bounded(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    sink = file_sink(tmp_path, clock, max_queue_records=2, batch_records=10)
    for n in range(5):
        sink.write(record(n))
    [service] = sink.services()
    stopped = service.stopService()
    assert stopped.called
    assert read_ids(tmp_path / "d" / "audit.log") == ["id-0", "id-1"]
    assert sink.counts == {"written": 2, "failed": 0, "dropped": 3}


def test_write_errors_are_logged_and_counted_never_raised(tmp_path: Path) -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    clock = MemoryReactorClock()
    try:
        sink = file_sink(tmp_path, clock)
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "audit.log").mkdir()  # a directory where the file should be
        sink.write(record(1))
        clock.advance(1)
        sink.write(record(2))
        clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sink.counts == {"written": 0, "failed": 2, "dropped": 0}
    failures = [e for e in events if "write failed" in e.get("log_format", "")]
    assert len(failures) == 2 and failures[0]["count"] == 1


def test_failures_show_in_metrics(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.get("/nowhere")
    h.clock.advance(1)
    scrape = h.assembly.metrics.render().decode()
    assert 'yatagarasu_audit_records_total{result="written",sink="file"} 1.0' in scrape
    assert 'yatagarasu_audit_records_total{result="failed",sink="file"} 0.0' in scrape


def test_rotation_by_size_names_backups_by_time_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotating = RotatingFile(path, 100, daily=False, max_backups=2)
    line = b"x" * 59 + b"\n"
    for i in range(5):
        rotating.write(line, 1_764_648_000.0 + i)  # 2025-12-02T04:00:0i
    rotating.close()
    assert path.read_bytes() == line
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.20251202T040003Z", "audit.log.20251202T040004Z"]


def test_a_batch_of_many_lines_is_cut_at_line_ends_so_no_file_grows_past_the_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    rotating = RotatingFile(path, 100, daily=False, max_backups=10)
    line = b"y" * 39 + b"\n"  # 40 bytes: two lines a file
    rotating.write(line, 0.0)
    rotating.write(line * 5, 1.0)  # one batch: the rest of this file, then two more
    rotating.write(b"z" * 149 + b"\n", 2.0)  # longer than a file: a file of its own
    rotating.write(line, 3.0)
    rotating.close()
    files = [*rotating.backups(), path]
    contents = [f.read_bytes() for f in files]
    assert contents == [line * 2, line * 2, line * 2, b"z" * 149 + b"\n", line]
    assert all(len(c) <= 100 for c in contents if not c.startswith(b"z"))


def test_two_rotations_in_one_second_do_not_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotating = RotatingFile(path, 10, daily=False, max_backups=5)
    for _ in range(3):
        rotating.write(b"123456789\n", 0.0)
    rotating.close()
    backups = [p.name for p in rotating.backups()]
    assert backups == ["audit.log.19700101T000000Z", "audit.log.19700101T000000Z-1"]


def test_daily_rotation_on_the_first_write_of_a_new_day(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    clock.advance(DAY - 10)
    sink = file_sink(tmp_path, clock, rotation_policy="daily", max_backup_files=1)
    sink.write(record(1))
    clock.advance(1)
    sink.write(record(2))
    clock.advance(20)  # the next day
    path = tmp_path / "d" / "audit.log"
    assert read_ids(path) == ["id-2"]
    [backup] = [p for p in path.parent.iterdir() if p != path]
    assert backup.name == "audit.log.19700102T000011Z"
    assert read_ids(backup) == ["id-1"]


def test_a_file_kept_from_yesterday_rotates_on_the_first_write_today(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"old\n")
    os.utime(path, (DAY * 10, DAY * 10))
    rotating = RotatingFile(path, 0, daily=True, max_backups=3)
    rotating.write(b"new\n", DAY * 11 + 5)
    rotating.close()
    assert path.read_bytes() == b"new\n"
    assert [p.read_bytes() for p in rotating.backups()] == [b"old\n"]


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    sink = file_sink(tmp_path, clock)
    path = tmp_path / "d" / "audit.log"
    sink.write(record(1))
    clock.advance(1)
    moved = path.with_name("audit.log.1")
    path.rename(moved)  # what logrotate does, before it sends SIGUSR1
    sink.write(record(2))
    sink.reopen()
    assert read_ids(moved) == ["id-1"]
    assert read_ids(path) == ["id-2"]


# --- a third-party sink (tests/plugins/csvsink, pip-installed) -------------------------------


def test_third_party_sink_is_found_validated_and_fed(tmp_path: Path) -> None:
    factory = available(IAuditSinkFactory, plugins)["csv"]
    assert verifyObject(IPlugin, factory) and verifyObject(IAuditSinkFactory, factory)
    bad = {"enabled": True, "outputs": ["csv"], "csv": {"path": "/x", "fields": ["nope"]}}
    assert build_error(tmp_path, bad).path == "audit_log.csv.fields[0]"
    target = tmp_path / "audit.csv"
    section = {"path": str(target), "fields": ["correlation_id", "response_status", "referer"]}
    h = harness(tmp_path, audit_log={"enabled": True, "outputs": ["csv"], "csv": section})
    [sink] = h.assembly.audit.sinks if h.assembly.audit is not None else []
    assert verifyObject(IAuditSink, sink)
    _, transport = h.get("/nowhere", "Referer: /p?token=LEAK")
    h.clock.advance(1)
    request_id = parse_response(transport.value()).header("x-request-id")
    assert target.read_text() == f"{request_id},404,/p?token={REDACTED}\n"


def test_check_summary_names_the_outputs(tmp_path: Path) -> None:
    h = harness(tmp_path)
    assert "audit outputs: file\n" in summary("yatagarasu.yaml", h.assembly)
    plain = Harness({"buckets": [bucket_entry()]})
    assert "audit" not in summary("yatagarasu.yaml", plain.assembly)


def test_a_reload_keeps_the_trail_and_a_request_spanning_it_is_recorded_once(
    tmp_path: Path,
) -> None:
    h = harness(tmp_path)
    trail = h.assembly.audit
    # A request that starts on generation 1 and ends after the swap.
    _, spanning = h.get("/pub/a.txt")
    document = dict(h.document)
    document["buckets"] = [bucket_entry(), bucket_entry("two", "/two")]
    report = h.reload(document)
    assert report.ok, report.message
    assert h.assembly.audit is trail  # no second writer on the file
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "5"}, b"hello"))
    first = parse_response(spanning.value())
    _, after = h.get("/two/b.txt")
    h.agents["two"].answer(FakeResponse(200, {"Content-Length": "2"}, b"hi"))
    second = parse_response(after.value())
    records = lines(h, tmp_path)
    assert [r["correlation_id"] for r in records] == [
        first.header("x-request-id"),
        second.header("x-request-id"),
    ]
    assert [r["bucket"] for r in records] == ["pub", "two"]


def test_a_reload_that_changes_audit_log_is_refused(tmp_path: Path) -> None:
    h = harness(tmp_path)
    document = dict(h.document)
    document["audit_log"] = audited(tmp_path, skip_probes=True)
    report = h.reload(document)
    assert report.status == 400
    assert report.message == "audit_log: changed; audit_log changes need a restart"
    assert h.reloader.generation == 1


def test_the_file_sink_is_refused_with_several_workers(tmp_path: Path) -> None:
    config = parse_config(
        {"buckets": [bucket_entry()], "audit_log": audited(tmp_path), "server": {"workers": 2}},
        {},
    )
    with pytest.raises(ConfigError) as info:
        assemble(config, MemoryReactorClock())
    assert info.value.path == "audit_log.outputs[0]"
    assert "needs server.workers: 1" in info.value.message


def test_between_flushes_only_full_batches_go_to_the_writer_thread(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    held: list[Deferred[None]] = []

    def run_later(work: Any) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        done.addCallback(lambda _: work())
        held.append(done)
        return done

    parsed = FileSinkSettings(path=str(tmp_path / "audit.log"), batch_records=3)
    sink = FileSink(parsed, clock, run_later)
    for n in range(3):
        sink.write(record(n))
    assert len(held) == 1  # a full batch: handed to the thread at once
    sink.write(record(3))
    held[0].callback(None)
    assert len(held) == 1  # one record is not a batch: it waits for the timer
    sink.write(record(4))
    sink.write(record(5))
    assert len(held) == 2  # full again
    held[1].callback(None)
    sink.write(record(6))
    flushed = sink.flush()  # the timer (or a stop): everything queued
    assert len(held) == 3 and not flushed.called
    held[2].callback(None)
    assert flushed.called
    assert read_ids(tmp_path / "audit.log") == [f"id-{n}" for n in range(7)]
    assert sink.counts == {"written": 7, "failed": 0, "dropped": 0}
    [service] = sink.services()
    stopped = service.stopService()  # closes the file (through the held runner)
    held[3].callback(None)
    assert stopped.called


def test_a_traced_record_carries_its_trace_id_last() -> None:
    record = AuditRecord(
        0.0, "id", "::1", None, None, None, "GET", "/a", 200, 0, 0.0, None, None, None
    )
    assert "trace_id" not in json.loads(to_json(record))
    assert "trace_id" not in to_dict(record)
    record.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parsed = json.loads(to_json(record))
    assert list(parsed) == [*FIELDS, "trace_id"]
    assert parsed["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert list(to_dict(record)) == [*FIELDS, "trace_id"]

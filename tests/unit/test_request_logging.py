"""``observability.request_logging``: the policy, and the access-log events a site writes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu.config import ConfigError, parse_config
from yatagarasu.config.schema import RequestLoggingConfig
from yatagarasu.interfaces import IAccessEntry, IAccessLog
from yatagarasu.logs import BufferedAccessLog
from yatagarasu.request_logging import RequestLogPolicy


def policy(**section: Any) -> RequestLogPolicy:
    built = RequestLogPolicy.build(RequestLoggingConfig(**section))
    assert built is not None
    return built


def test_a_section_that_changes_nothing_builds_no_policy() -> None:
    assert RequestLogPolicy.build(RequestLoggingConfig()) is None
    assert RequestLogPolicy.build(RequestLoggingConfig(redact_headers=("x-a",))) is None
    assert RequestLogPolicy.build(RequestLoggingConfig(log_requests=True)) is not None


def test_paths_are_included_and_excluded_by_pattern() -> None:
    only_pub = policy(include_paths=("/pub/*", "/img/v?/*"), exclude_paths=("/pub/private/*",))
    assert policy(include_paths=("/img/v[12]/*",)).path_wanted("/img/v1/x.png")
    assert not policy(include_paths=("/img/v[12]/*",)).path_wanted("/img/v3/x.png")
    assert only_pub.path_wanted("/pub/a.txt")
    assert only_pub.path_wanted("/pub/deep/er/a.txt")  # * crosses segments, as in Rust
    assert only_pub.path_wanted("/img/v2/x.png")
    assert not only_pub.path_wanted("/img/v10/x.png")
    assert not only_pub.path_wanted("/pub/private/a.txt")  # exclude wins
    assert not only_pub.path_wanted("/health")
    assert not only_pub.path_wanted("/xpub/a.txt")
    no_health = policy(exclude_paths=("/health", "/metrics"))
    assert not no_health.path_wanted("/health")
    assert no_health.path_wanted("/health/x")  # whole-path match
    assert no_health.path_wanted("/pub/a")


def test_status_codes_filter_the_access_event() -> None:
    errors = policy(status_codes=(404, 502))
    assert errors.response_wanted("/pub/a", 404)
    assert not errors.response_wanted("/pub/a", 200)
    both = policy(status_codes=(404,), exclude_paths=("/health",))
    assert not both.response_wanted("/health", 404)


def test_headers_are_redacted_by_the_audit_redaction() -> None:
    listed = policy(log_requests=True, redact_headers=("X-Custom-Secret-Ish",))
    shown = listed.headers(
        [
            (b"Authorization", b"Bearer eyJabc"),
            (b"X-Auth-Token", b"t0ken"),
            (b"Cookie", b"session=1"),
            (b"X-Custom-Secret-Ish", b"value"),
            (b"Referer", b"https://app/?access_token=abc&page=2"),
            (b"Accept", b"text/plain"),
            (b"Accept", b"*/*"),
        ]
    )
    assert shown == {
        "authorization": "[REDACTED]",  # whatever redact_headers says
        "x-auth-token": "[REDACTED]",  # a secret-looking name
        "cookie": "[REDACTED]",
        "x-custom-secret-ish": "[REDACTED]",
        "referer": "https://app/?access_token=[REDACTED]&page=2",
        "accept": "text/plain, */*",
    }
    assert listed.target(b"/pub/a?token=abc&x=1&X-Amz-Signature=f") == (
        "/pub/a?token=[REDACTED]&x=1&X-Amz-Signature=[REDACTED]"
    )
    assert policy(log_requests=True, redact_headers=("user-agent",)).user_agent("curl") == (
        "[REDACTED]"
    )


@pytest.mark.parametrize(
    ("section", "path", "needle"),
    [
        ({"include_paths": ["pub/*"]}, "include_paths[0]", "starts with '/'"),
        ({"status_codes": [200, 99]}, "status_codes[1]", "100..599"),
        ({"status_codes": ["404"]}, "status_codes[0]", "expected an integer"),
        ({"log_response_body": False}, "log_response_body", "bodies are never logged"),
        ({"max_body_size": 10}, "max_body_size", "not supported"),
        ({"log_request": True}, "log_request", "did you mean 'log_requests'"),
    ],
)
def test_bad_values_name_the_key(section: dict[str, Any], path: str, needle: str) -> None:
    document = {
        "buckets": [bucket_entry()],
        "observability": {"request_logging": section},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(document, {})
    assert caught.value.path == f"observability.request_logging.{path}"
    assert needle in caught.value.message


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def logging_harness(**section: Any) -> Harness:
    return Harness(
        {
            "cache": {"enabled": True},
            "buckets": [bucket_entry()],
            "observability": {"request_logging": section},
        }
    )


def of(events: list[LogEvent], namespace: str) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == namespace]


def test_the_site_filters_and_enriches_the_access_log(events: list[LogEvent]) -> None:
    h = logging_harness(
        log_requests=True,
        log_responses=True,
        exclude_paths=["/health"],
        status_codes=[200, 404],
    )
    secret = "Authorization: Bearer eyJ.secret.token"
    h.get("/pub/a?token=qq-zz&n=1", secret, "X-Api-Key: k-123", "Referer: http://x/?sig=zz")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "2", "ETag": '"e1"'}, body=b"ok"))
    _, transport = h.get("/pub/a", secret)  # a hit: its headers were encoded ahead
    assert parse_response(transport.value()).header("x-cache") == "HIT"
    h.get("/health")
    h.get("/pub/gone")
    h.agents["pub"].answer(FakeResponse(403, {}, body=b""))  # 403: not a listed status
    arrivals = of(events, "yatagarasu.request")
    assert [e["target"] for e in arrivals] == ["/pub/a?token=[REDACTED]&n=1", "/pub/a", "/pub/gone"]
    first = arrivals[0]["request_headers"]
    assert first["authorization"] == "[REDACTED]"
    assert first["x-api-key"] == "[REDACTED]"
    assert first["referer"] == "http://x/?sig=[REDACTED]"
    access = of(events, "yatagarasu.access")
    assert [(e["path"], e["status"], e["cache"]) for e in access] == [
        ("/pub/a", 200, "MISS"),
        ("/pub/a", 200, "HIT"),
    ]
    for event in access:
        headers = event["response_headers"]
        assert headers["etag"] == '"e1"'
        assert headers["x-request-id"] == event["request_id"]
        assert headers["content-length"] == "2"
    assert access[1]["response_headers"]["x-cache"] == "HIT"
    logged = repr(events)
    assert "eyJ.secret.token" not in logged and "k-123" not in logged and "qq-zz" not in logged


def test_without_the_section_every_request_is_logged_as_before(events: list[LogEvent]) -> None:
    h = Harness({"buckets": [bucket_entry()]})
    h.get("/health")
    h.get("/pub/a")
    h.agents["pub"].answer(FakeResponse(404, {}, body=b""))
    access = of(events, "yatagarasu.access")
    assert [(e["path"], e["status"]) for e in access] == [("/health", 200), ("/pub/a", 404)]
    assert not any("response_headers" in e for e in access)
    assert of(events, "yatagarasu.request") == []


def test_a_reload_applies_a_changed_section_to_new_requests(events: list[LogEvent]) -> None:
    h = logging_harness(exclude_paths=["/health"])
    h.get("/health")
    document = copy.deepcopy(h.document)
    document["observability"]["request_logging"] = {"status_codes": [404]}
    assert h.reload(document).status == 200
    h.get("/health")
    h.get("/nowhere")
    assert [(e["path"], e["status"]) for e in of(events, "yatagarasu.access")] == [
        ("/nowhere", 404)
    ]


def test_below_info_nothing_is_built_for_request_logging() -> None:
    h = Harness(
        {
            "buckets": [bucket_entry()],
            "logging": {"level": "warn"},
            "observability": {"request_logging": {"log_requests": True}},
        }
    )
    assert h.site.served.request_logging is None
    assert logging_harness(log_requests=True).site.served.request_logging is not None


def test_with_logging_file_the_site_writes_buffered_lines_and_a_reload_flushes(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    path = tmp_path / "proxy.log"
    h = Harness({"buckets": [bucket_entry()], "logging": {"file": str(path)}})
    access_log = h.assembly.access_log
    assert isinstance(access_log, BufferedAccessLog) and access_log in h.assembly.services
    h.reloader.startService()  # runs the generation's services: lines are held from now on
    h.get("/health")
    h.get("/nowhere")
    assert not path.exists() and of(events, "yatagarasu.access") == []
    assert h.reload(copy.deepcopy(h.document)).status == 200
    assert h.assembly.access_log is access_log  # the process's, kept
    lines = path.read_text().splitlines()
    assert [line.split("] ", 1)[1].split(" ")[1:4] for line in lines] == [
        ["GET", "/health", "200"],
        ["GET", "/nowhere", "404"],
    ]
    assert all(" [yatagarasu.access#info] 127.0.0.1 " in line for line in lines)
    h.get("/health")
    h.clock.advance(1.0)  # the interval
    assert len(path.read_text().splitlines()) == 3
    h.get("/health")
    h.reloader.stopService()
    assert len(path.read_text().splitlines()) == 4


@implementer(IAccessLog)
class RecordedAccessLog:
    """Keeps what each entry says, at the time of the write."""

    def __init__(self) -> None:
        self.written: list[tuple[float, str, str, dict[str, Any]]] = []

    def write(self, when: float, entry: IAccessEntry) -> None:
        assert verifyObject(IAccessEntry, entry)
        values = entry.message_values()
        assert all(type(v) in (str, bytes, int, float, type(None)) for v in values)  # plain
        message = entry.format_message(values)
        self.written.append((when, entry.template, message, entry.fields()))

    def flush(self) -> None:
        """Nothing is held."""


@pytest.mark.parametrize(
    "observability",
    [
        {},
        {"tracing": {"enabled": True, "exporter": "none"}},
        {"request_logging": {"log_responses": True, "redact_headers": ["user-agent"]}},
    ],
    ids=["plain", "traced", "policy"],
)
def test_an_entry_text_is_its_template_filled_with_its_fields(
    observability: dict[str, Any],
) -> None:
    h = Harness(
        {"cache": {"enabled": True}, "buckets": [bucket_entry()], "observability": observability}
    )
    recorded = RecordedAccessLog()
    h.site.access_log = recorded
    start = h.clock.seconds()
    h.get("/pub/caf%C3%A9", "User-Agent: curl/8")
    h.clock.advance(0.0123456)  # the miss takes 12.346 ms
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "2"}, body=b"ok"))
    h.get("/pub/caf%C3%A9")  # a hit
    h.get("/pub/k", method="HEAD")
    h.agents["pub"].answer(FakeResponse(404, {}, body=b""))
    h.get("/pub/k", method="PATCH")
    assert len(recorded.written) == 4
    for _, template, message, fields in recorded.written:
        assert message == template.format_map(fields)
    assert recorded.written[0][0] == start + 0.0123456
    assert recorded.written[0][3]["duration_ms"] == 12.346
    texts = [message for _, _, message, _ in recorded.written]
    assert texts[0].startswith("127.0.0.1 GET /pub/caf%C3%A9 200 2B 12.346ms")
    assert [f["cache"] for *_, f in recorded.written[:2]] == ["MISS", "HIT"]
    assert [f["method"] for *_, f in recorded.written] == ["GET", "GET", "HEAD", "PATCH"]
    traced = "tracing" in observability
    assert all(("trace_id" in f) == traced for *_, f in recorded.written)
    assert all((" trace " in text) == traced for text in texts)
    if "request_logging" in observability:
        first = recorded.written[0][3]
        assert first["user_agent"] == "[REDACTED]" and "content-length" in first["response_headers"]
    else:
        assert recorded.written[0][3]["user_agent"] == "curl/8"

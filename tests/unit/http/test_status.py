"""RFC 9110 reason phrases: one table for the status line and the JSON ``error`` field."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.web.http import RESPONSES

from tests.unit.fakes import FakeResponse, Harness, bucket_entry
from yatagarasu.http.status import PHRASES, reason_phrase, reason_phrase_bytes
from yatagarasu.web.responses import error_body

#: Every status the proxy emits, with its phrase as RFC 9110 §15 (RFC 6585 for 431) spells it.
EMITTED = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

OBJECT = {"Content-Type": "text/plain", "ETag": '"e1"', "Content-Length": "11"}


@pytest.mark.parametrize(("status", "phrase"), sorted(EMITTED.items()))
def test_table_has_the_rfc_9110_phrase(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase
    assert reason_phrase_bytes(status) == phrase.encode("ascii")
    assert json.loads(error_body(status, "m", "rid"))["error"] == phrase


def test_the_phrases_that_changed_since_rfc_2616_are_the_new_ones() -> None:
    changed = {
        code: (RESPONSES[code].decode(), phrase)
        for code, phrase in PHRASES.items()
        if code in RESPONSES and RESPONSES[code].decode() != phrase
    }
    assert changed[504] == ("Gateway Time-out", "Gateway Timeout")
    assert changed[413] == ("Request Entity Too Large", "Content Too Large")
    assert changed[414] == ("Request-URI Too Long", "URI Too Long")
    assert changed[416] == ("Requested Range not satisfiable", "Range Not Satisfiable")
    assert PHRASES[422] == "Unprocessable Content"


def test_unregistered_codes_get_their_class_name() -> None:
    assert reason_phrase(599) == "Server Error"
    assert reason_phrase(499) == "Client Error"
    assert reason_phrase_bytes(299) == b"Successful"


def _cached(h: Harness, *headers: str) -> bytes:
    _, first = h.get("/pub/k")
    h.agents["pub"].answer(
        FakeResponse(200, {**OBJECT, "Cache-Control": "max-age=60"}, b"hello world")
    )
    assert first.value().startswith(b"HTTP/1.1 200 ")
    _, transport = h.get("/pub/k", *headers)
    return transport.value()


def _from_s3(status: int, body: bytes = b"", *headers: str) -> Callable[[], bytes]:
    def run() -> bytes:
        h = Harness({"buckets": [bucket_entry()]})
        _, transport = h.get("/pub/k", *headers)
        h.agents["pub"].answer(FakeResponse(status, OBJECT if status < 300 else {}, body))
        return transport.value()

    return run


def _get(target: str, *headers: str, method: str = "GET", **top: object) -> Callable[[], bytes]:
    def run() -> bytes:
        buckets = top.pop("buckets", [bucket_entry()])
        h = Harness({"buckets": buckets, **top})
        _, transport = h.get(target, *headers, method=method)
        return transport.value()

    return run


def _refused() -> bytes:
    h = Harness({"buckets": [bucket_entry()]})
    _, transport = h.get("/pub/k")
    h.agents["pub"].fail(ConnectionRefusedError())
    return transport.value()


def _first_byte_timeout() -> bytes:
    h = Harness({"buckets": [bucket_entry(s3={"first_byte_timeout": 1})]})
    _, transport = h.get("/pub/k")
    h.clock.advance(1.5)
    return transport.value()


def _over_concurrency() -> bytes:
    h = Harness({"buckets": [bucket_entry()], "server": {"max_concurrent_requests": 1}})
    h.get("/pub/waiting")
    _, transport = h.get("/pub/k")
    return transport.value()


def _cache() -> Harness:
    return Harness({"buckets": [bucket_entry()], "cache": {"enabled": True}})


LIMITS = {"security_limits": {"max_uri_length": 100, "max_header_size": 200, "max_body_size": 4}}
CORS = {"allowed_origins": ["https://app.example.com"]}
SCENARIOS: list[tuple[str, int, Callable[[], bytes]]] = [
    ("s3 200", 200, _from_s3(200, b"hello world")),
    ("cache hit", 200, lambda: _cached(_cache())),
    ("preflight", 204, _get(
        "/pub/k", "Origin: https://app.example.com", "Access-Control-Request-Method: GET",
        method="OPTIONS", buckets=[bucket_entry(cors=CORS)],
    )),
    ("s3 206", 206, _from_s3(206, b"he")),
    ("cached range", 206, lambda: _cached(_cache(), "Range: bytes=0-1")),
    ("s3 304", 304, _from_s3(304)),
    ("cached 304", 304, lambda: _cached(_cache(), 'If-None-Match: "e1"')),
    ("traversal", 400, _get("/pub/%2e%2e/x")),
    ("no token", 401, _get(
        "/pub/k", buckets=[bucket_entry(auth={"enabled": True})], jwt={"secret": "s" * 32}
    )),
    ("s3 403", 403, _from_s3(403, b"<Error><Code>AccessDenied</Code></Error>")),
    ("no route", 404, _get("/nowhere")),
    ("method", 405, _get("/pub/k", "Content-Length: 0", method="DELETE")),
    ("s3 412", 412, _from_s3(412)),
    ("body", 413, _get("/pub/k", "Content-Length: 5", server=LIMITS)),
    ("uri", 414, _get("/pub/" + "a" * 200, server=LIMITS)),
    ("s3 416", 416, _from_s3(416)),
    ("cached 416", 416, lambda: _cached(_cache(), "Range: bytes=50-60")),
    ("headers", 431, _get("/pub/k", "X-Big: " + "b" * 300, server=LIMITS)),
    ("refused", 502, _refused),
    ("concurrency", 503, _over_concurrency),
    ("s3 503", 503, _from_s3(503, b"<Error><Code>SlowDown</Code></Error>")),
    ("timeout", 504, _first_byte_timeout),
]  # fmt: skip


@pytest.mark.parametrize(("status", "scenario"), [(s, f) for _, s, f in SCENARIOS],
                         ids=[name for name, _, _ in SCENARIOS])  # fmt: skip
def test_status_line_and_json_error_use_the_table(
    status: int, scenario: Callable[[], bytes]
) -> None:
    raw = scenario()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 %d %s" % (status, EMITTED[status].encode())
    if status >= 400:
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == EMITTED[status]


def test_every_emitted_status_but_500_has_a_scenario() -> None:
    covered = {status for _, status, _ in SCENARIOS}
    assert set(EMITTED) - covered == {500}

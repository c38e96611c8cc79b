"""
The range grammar and the conditional fields through the real twistd process, against moto
(SigV4 on): a cached object and the same object uncached (straight from S3) must answer every
row alike, with the status RFC 9110 asks for (§13, §14.1.2, §15.5.17).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from devharness.http_client import HttpResponse
from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess

SIZE = 1000
HUGE = "9" * 30
DIGITS_5000 = "1" * 5000

MEMORY = {"enabled": True, "memory": {"max_cache_size_mb": 16, "max_item_size_mb": 4}}

# (key, Range, expected status, expected Content-Range, expected body slice or None for JSON)
RANGE_TABLE: list[tuple[str, str, int, str | None, slice | None]] = [
    ("obj", "bytes=0-9", 206, f"bytes 0-9/{SIZE}", slice(0, 10)),
    (
        "obj",
        f"bytes={SIZE - 1}-",
        206,
        f"bytes {SIZE - 1}-{SIZE - 1}/{SIZE}",
        slice(SIZE - 1, SIZE),
    ),
    ("obj", f"bytes={SIZE}-", 416, f"bytes */{SIZE}", None),  # first-pos at the length
    ("obj", f"bytes={SIZE + 10}-", 416, f"bytes */{SIZE}", None),  # past it (issue 8 item 3)
    ("obj", f"bytes={SIZE + 10}-{SIZE + 20}", 416, f"bytes */{SIZE}", None),
    ("obj", "bytes=-0", 416, f"bytes */{SIZE}", None),
    ("obj", "bytes=-10", 206, f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}", slice(SIZE - 10, SIZE)),
    ("obj", f"bytes=-{SIZE * 2}", 206, f"bytes 0-{SIZE - 1}/{SIZE}", slice(0, SIZE)),
    ("empty", "bytes=0-", 416, "bytes */0", None),
    ("empty", "bytes=-5", 200, None, slice(0, 0)),  # satisfiable, but no 206 can describe it
    ("obj", "bytes= 0-9", 206, f"bytes 0-9/{SIZE}", slice(0, 10)),  # OWS of the list rule
    ("obj", "BYTES=0-9", 206, f"bytes 0-9/{SIZE}", slice(0, 10)),  # units are case-insensitive
    ("obj", "bytes = 0-9", 200, None, slice(0, SIZE)),  # not the grammar: ignored
    ("obj", "bytes=0 - 9", 200, None, slice(0, SIZE)),
    ("obj", "bytes=0-1,5-6", 200, None, slice(0, SIZE)),  # several ranges: the whole object
    ("obj", "bytes=0-1, 5-6", 200, None, slice(0, SIZE)),
    ("obj", "items=0-9", 200, None, slice(0, SIZE)),  # unknown unit
    ("obj", "bytes=9-5", 200, None, slice(0, SIZE)),  # last-pos before first-pos
    ("obj", "bytes=", 200, None, slice(0, SIZE)),
    ("obj", "bytes=-", 200, None, slice(0, SIZE)),
    ("obj", "bytes=abc", 200, None, slice(0, SIZE)),
    ("obj", "garbage", 200, None, slice(0, SIZE)),
    ("obj", "bytes=0x10-0x20", 200, None, slice(0, SIZE)),
    ("obj", f"bytes=0-{HUGE}", 206, f"bytes 0-{SIZE - 1}/{SIZE}", slice(0, SIZE)),
    ("obj", f"bytes={HUGE}-", 416, f"bytes */{SIZE}", None),
    ("obj", f"bytes=-{HUGE}", 206, f"bytes 0-{SIZE - 1}/{SIZE}", slice(0, SIZE)),
    ("obj", f"bytes={DIGITS_5000}-", 416, f"bytes */{SIZE}", None),
]


def _setup(
    proxy: Callable[..., ProxyProcess], moto: MotoS3Server, bucket: str
) -> tuple[ProxyProcess, bytes, dict[str, str]]:
    body = os.urandom(SIZE)
    etags = {
        "obj": moto.put_object(bucket, "obj", body, CacheControl="max-age=600"),
        "empty": moto.put_object(bucket, "empty", b"", CacheControl="max-age=600"),
    }
    running = proxy(
        {
            "cache": MEMORY,
            "buckets": [
                bucket_config(moto, "cached", bucket),
                bucket_config(moto, "direct", bucket, cache={"enabled": False}),
            ],
        }
    )
    for key in etags:  # fill the cache: every row below is a HIT on /cached
        assert running.get(f"/cached/{key}").header("X-Cache") in ("MISS", "HIT")
        assert running.get(f"/cached/{key}").header("X-Cache") == "HIT"
    return running, body, etags


def _comparable(response: HttpResponse) -> tuple[int, str | None, Any]:
    body: Any = response.body
    if response.header("Content-Type") == "application/json":
        body = json.loads(response.body)
        body.pop("request_id")
    return response.status, response.header("Content-Range"), body


def test_range_table_cached_and_uncached_agree_with_rfc_9110(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    running, body, _ = _setup(proxy, moto_s3, s3_bucket)
    failures = []
    for key, value, status, content_range, part in RANGE_TABLE:
        cached = running.get(f"/cached/{key}", headers={"Range": value})
        direct = running.get(f"/direct/{key}", headers={"Range": value})
        expected_body = (body if key == "obj" else b"")[part] if part is not None else None
        row = (key, value[:40])
        if cached.header("X-Cache") != "HIT":
            failures.append((row, "cached path not a HIT", cached.header("X-Cache")))
        if _comparable(cached) != _comparable(direct):
            failures.append((row, "paths differ", _comparable(cached), _comparable(direct)))
        got = (direct.status, direct.header("Content-Range"))
        if got != (status, content_range):
            failures.append((row, "not RFC 9110", got))
        if expected_body is not None and direct.body != expected_body:
            failures.append((row, "wrong body", len(direct.body)))
        if part is None and json.loads(direct.body)["status"] != 416:
            failures.append((row, "not our JSON 416", direct.body[:100]))
    assert failures == []


def test_conditional_table_cached_and_uncached_agree(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    running, body, etags = _setup(proxy, moto_s3, s3_bucket)
    etag = etags["obj"]
    modified = running.get("/direct/obj").header("Last-Modified")
    assert modified is not None
    table: list[tuple[dict[str, str], int]] = [
        ({"If-Modified-Since": "not a date"}, 200),  # issue 15: was 502 uncached
        ({"If-Unmodified-Since": "not a date"}, 200),
        ({"If-Modified-Since": "Sun Nov  6 08:49:37 2094"}, 304),  # asctime, sent canonical
        ({"If-Modified-Since": "Sunday, 06-Nov-94 08:49:37 GMT"}, 200),  # rfc850, long ago
        ({"If-Modified-Since": modified}, 304),
        ({"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}, 412),
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": "not-quoted"}, 200),  # not an entity-tag list: ignored
        ({"If-Match": "not-quoted"}, 200),
        ({"If-Match": '"other"'}, 412),
        ({"If-Match": etag}, 200),
        ({"If-Range": etag, "Range": "bytes=0-9"}, 206),
        ({"If-Range": '"other"', "Range": "bytes=0-9"}, 200),  # S3 ignores If-Range; we do not
        ({"If-Range": "W/" + etag, "Range": "bytes=0-9"}, 200),  # weak never matches
        ({"If-Range": "not a validator", "Range": "bytes=0-9"}, 200),
        ({"If-Range": modified, "Range": "bytes=0-9"}, 206),
        ({"If-Range": "Sun, 06 Nov 1994 08:49:37 GMT", "Range": "bytes=0-9"}, 200),
    ]
    failures = []
    for headers, status in table:
        cached = running.get("/cached/obj", headers=headers)
        direct = running.get("/direct/obj", headers=headers)
        if _comparable(cached) != _comparable(direct):
            failures.append((headers, "paths differ", _comparable(cached), _comparable(direct)))
        if direct.status != status:
            failures.append((headers, "status", direct.status, direct.body[:200]))
        if status == 200 and direct.body != body:
            failures.append((headers, "not the whole body", len(direct.body)))
    assert failures == []


def test_invalid_if_modified_since_is_not_forwarded(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    """Issue 15: forwarded verbatim, moto answered 500, retried, 502. Now ignored: 200."""
    body = os.urandom(SIZE)
    moto_s3.put_object(s3_bucket, "ims.bin", body)
    running = proxy({"buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    moto_s3.clear_requests()
    answer = running.get("/pub/ims.bin", headers={"If-Modified-Since": "not a date"})
    assert (answer.status, answer.body) == (200, body)
    sent = moto_s3.requests("GET", s3_bucket, "ims.bin")
    assert len(sent) == 1
    assert not any(name.lower() == "if-modified-since" for name in sent[0].headers)


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("Sunday, 06-Nov-94 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Sun Nov  6 08:49:37 1994", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ],
)
def test_obsolete_dates_are_forwarded_as_imf_fixdate(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    value: str,
    sent: str,
) -> None:
    moto_s3.put_object(s3_bucket, "old.bin", b"x" * 10)
    running = proxy({"buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    moto_s3.clear_requests()
    assert running.get("/pub/old.bin", headers={"If-Modified-Since": value}).status == 200
    (request,) = moto_s3.requests("GET", s3_bucket, "old.bin")
    headers = {name.lower(): v for name, v in request.headers.items()}
    assert headers["if-modified-since"] == sent


MALFORMED = [
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: not a date\r\n\r\n",
    b'GET /pub/obj HTTP/1.1\r\nHost: x\r\nIf-Match: bogus\r\nIf-None-Match: "a\r\n\r\n',
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"9" * 5000 + b"-\r\n\r\n",
    b'GET /pub/obj HTTP/1.1\r\nHost: x\r\nRange: items=0-9\r\nIf-Range: W/"x"\r\n\r\n',
    b"GET /pub/%2e%2e/%2E%2e/etc HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pub/%c0%ae%c0%ae/x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pub/a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pub/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://other/pub/obj HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nX-A: one\r\n folded\r\n\r\n",
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nX-\xff: \xfe\xfd\r\n\r\n",
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /pub/obj HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a.b\r\n\r\n",
    b"GET /pub/obj HTTP/9.9\r\n\r\n",
    b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
    b"GET\r\n\r\n",
]


def _send_raw(port: int, raw: bytes) -> bytes:
    """Send ``raw``, read until the proxy closes or 5 s pass; :returns: what came back."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        try:
            for _ in range(100):  # bounded: a response is a few chunks
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if b"\r\n\r\n" in received and b"Connection: close" not in received:
                    head, _, rest = received.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    if length and len(rest) >= int(length.group(1)):
                        break
        except TimeoutError:
            pass
    return received


def test_malformed_requests_through_twistd_leave_it_serving(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    body = os.urandom(SIZE)
    moto_s3.put_object(s3_bucket, "obj", body)
    running = proxy({"buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    answers = []
    for raw in MALFORMED:
        received = _send_raw(running.port, raw)
        status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.") else None
        answers.append((raw[:50], status))
    assert [a for a in answers if a[1] is not None and a[1] >= 500] == []
    assert answers[0][1] == 200  # the invalid If-Modified-Since is ignored (was 502)
    assert running.is_running()
    assert "Traceback" not in running.log_text()
    after = running.get("/pub/obj")
    assert (after.status, after.body) == (200, body)

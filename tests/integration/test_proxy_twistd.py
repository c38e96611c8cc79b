"""The core proxy through the real ``twistd`` process, against moto with SigV4 checking on."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.http_client import http_request
from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config, write_config
from devharness.twistd import ProxyProcess, twistd_command
from devharness.waiting import wait_until

BIG = 40 * 1024 * 1024


@pytest.fixture
def seeded(moto_s3: MotoS3Server, s3_bucket: str) -> dict[str, str]:
    """A bucket with awkward keys; returns key → ETag."""
    objects = {
        "hello.txt": (
            b"hello world\n",
            {"content_type": "text/plain", "CacheControl": "max-age=60"},
        ),
        "docs/read me.txt": (b"spaces\n", {}),
        "plus+sign.txt": (b"plus\n", {}),
        "ünï/日本.txt": (b"unicode\n", {}),
        "a/b": (b"slash\n", {}),
        "attach.bin": (
            b"\x00\x01",
            {"ContentDisposition": 'attachment; filename="x.bin"', "ContentEncoding": "identity"},
        ),
    }
    etags = {}
    for key, (body, extra) in objects.items():
        etags[key] = moto_s3.put_object(s3_bucket, key, body, **extra)
    return etags


@pytest.fixture
def running(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    seeded: dict[str, str],
) -> ProxyProcess:
    return proxy(make_proxy_config({"pub": s3_bucket}))


def test_get_object_headers_and_signature(
    running: ProxyProcess, moto_s3: MotoS3Server, s3_bucket: str, seeded: dict[str, str]
) -> None:
    moto_s3.clear_requests()
    response = running.get(
        "/pub/hello.txt?token=very-secret&X-Amz-Credential=x",
        headers={"Authorization": "Bearer client-token", "X-Auth-Token": "other-secret"},
    )
    assert response.status == 200
    assert response.body == b"hello world\n"
    assert response.header("ETag") == seeded["hello.txt"]
    assert response.header("Content-Length") == "12"
    assert response.header("Content-Type") == "text/plain"
    assert response.header("Cache-Control") == "max-age=60"
    assert response.header("Last-Modified")
    assert response.header("Accept-Ranges") == "bytes"
    assert not [name for name, _ in response.headers if name.lower().startswith("x-amz")]
    assert response.header("X-Request-ID") == response.header("X-Correlation-ID")
    upstream = moto_s3.requests("GET", s3_bucket, "hello.txt")
    assert len(upstream) == 1
    sent = {k.lower(): v for k, v in upstream[0].headers.items()}
    assert sent["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert "client-token" not in json.dumps(sent)
    assert "x-auth-token" not in sent
    assert upstream[0].query == ""
    log = running.settled_log_text()
    assert "very-secret" not in log and "client-token" not in log


@pytest.mark.parametrize(
    ("path", "key", "body"),
    [
        ("/pub/docs/read%20me.txt", "docs/read me.txt", b"spaces\n"),
        ("/pub/plus+sign.txt", "plus+sign.txt", b"plus\n"),
        ("/pub/%C3%BCn%C3%AF/%E6%97%A5%E6%9C%AC.txt", "ünï/日本.txt", b"unicode\n"),
        ("/pub/a%2Fb", "a/b", b"slash\n"),
    ],
)
def test_awkward_keys(running: ProxyProcess, path: str, key: str, body: bytes) -> None:
    response = running.get(path)
    assert (response.status, response.body) == (200, body), key


def test_passes_content_disposition_and_encoding(running: ProxyProcess) -> None:
    response = running.get("/pub/attach.bin")
    assert response.header("Content-Disposition") == 'attachment; filename="x.bin"'
    assert response.header("Content-Encoding") == "identity"


def test_head_matches_get_without_body(running: ProxyProcess, seeded: dict[str, str]) -> None:
    response = running.request("HEAD", "/pub/hello.txt")
    assert response.status == 200
    assert response.body == b""
    assert response.header("Content-Length") == "12"
    assert response.header("ETag") == seeded["hello.txt"]
    missing = running.request("HEAD", "/pub/missing.txt")
    assert (missing.status, missing.body) == (404, b"")


def test_range_and_unsatisfiable_range(running: ProxyProcess) -> None:
    response = running.get("/pub/hello.txt", headers={"Range": "bytes=0-4"})
    assert response.status == 206
    assert response.body == b"hello"
    assert response.header("Content-Range") == "bytes 0-4/12"
    response = running.get("/pub/hello.txt", headers={"Range": "bytes=100-200"})
    assert response.status == 416
    assert response.json()["status"] == 416


def test_conditionals(running: ProxyProcess, seeded: dict[str, str]) -> None:
    etag = seeded["hello.txt"]
    assert running.get("/pub/hello.txt", headers={"If-None-Match": etag}).status == 304
    assert running.get("/pub/hello.txt", headers={"If-None-Match": '"other"'}).status == 200
    last_modified = running.get("/pub/hello.txt").header("Last-Modified")
    assert last_modified is not None
    assert running.get("/pub/hello.txt", headers={"If-Modified-Since": last_modified}).status == 304
    failed = running.get("/pub/hello.txt", headers={"If-Match": '"nope"'})
    assert failed.status == 412
    # The same answer as a cached object's (S3's own wording and code are not passed on).
    assert failed.json()["message"] == "precondition failed"


def test_s3_404_json(running: ProxyProcess) -> None:
    response = running.get("/pub/nope.txt", headers={"X-Request-ID": "trace-42"})
    assert response.status == 404
    assert response.header("Content-Type") == "application/json"
    document = response.json()
    assert document["s3_code"] == "NoSuchKey"
    assert document["request_id"] == "trace-42"
    assert response.header("X-Request-ID") == "trace-42"
    assert int(response.header("Content-Length") or -1) == len(response.body)


def test_routing_errors_and_traversal(running: ProxyProcess) -> None:
    assert running.get("/pubx/hello.txt").status == 404
    assert running.get("/other/hello.txt").json()["status"] == 404
    for target in (
        "/pub/../x",
        "/pub/%2e%2e/x",
        "/pub/..%2fx",
        "/pub/%252e%252e/x",
        "/pub/a%5cb",
        "/pub/a%00",
    ):
        response = running.get(target)
        assert response.status == 400, target
        assert response.json()["error"] == "Bad Request"
    response = running.request("DELETE", "/pub/hello.txt")
    assert response.status == 405
    assert response.header("Allow") == "GET, HEAD, OPTIONS"


def test_forty_mib_object_is_byte_exact(
    running: ProxyProcess, moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    body = hashlib.sha256(b"seed").digest() * (BIG // 32)
    etag = moto_s3.put_object(s3_bucket, "big/forty.bin", body)
    response = running.get("/pub/big/forty.bin", timeout=60)
    assert response.status == 200
    assert response.header("Content-Length") == str(BIG)
    assert response.header("ETag") == etag
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()


def test_wrong_credentials_give_s3_403(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    seeded: dict[str, str],
) -> None:
    entry = bucket_config(moto_s3, "pub", s3_bucket)
    entry["s3"]["secret_key"] = "not-the-secret"
    running = proxy({"buckets": [entry]})
    response = running.get("/pub/hello.txt")
    assert response.status == 403
    assert response.json()["s3_code"] == "SignatureDoesNotMatch"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        for _ in range(3000):
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_unreachable_and_silent_upstreams(
    proxy: Callable[..., ProxyProcess], silent_server: int
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    common = {
        "bucket": "x",
        "access_key": "AKID",
        "secret_key": "secret",
        "retry": {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 20},
    }
    running = proxy(
        {
            "buckets": [
                {
                    "name": "down",
                    "path_prefix": "/down",
                    "s3": {**common, "endpoint": f"http://127.0.0.1:{closed_port}"},
                },
                {
                    "name": "slow",
                    "path_prefix": "/slow",
                    "s3": {
                        **common,
                        "endpoint": f"http://127.0.0.1:{silent_server}",
                        "first_byte_timeout": 1,
                    },
                },
            ]
        }
    )
    down = running.get("/down/k")
    assert down.status == 502
    assert "connect" in down.json()["message"]
    slow = running.get("/slow/k", timeout=30)
    assert slow.status == 504
    assert (slow.reason, slow.json()["error"]) == ("Gateway Timeout", "Gateway Timeout")
    assert (down.reason, down.json()["error"]) == ("Bad Gateway", "Bad Gateway")
    for i in range(3):
        running.get(f"/down/k{i}")
    ready = running.get("/ready").json()
    assert ready["backends"]["down"]["status"] == "unhealthy"
    replicas = ready["backends"]["slow"]["replicas"]
    assert list(replicas) == ["primary"]
    assert replicas["primary"]["endpoint"] == f"http://127.0.0.1:{silent_server}"
    assert replicas["primary"]["consecutive_failures"] == 2


def test_health_and_ready(running: ProxyProcess) -> None:
    health = running.get("/health")
    assert health.status == 200
    document = health.json()
    assert document["status"] == "healthy"
    assert isinstance(document["uptime_seconds"], int)
    assert document["version"]
    ready = running.get("/ready")
    assert (ready.status, ready.json()["status"]) == (200, "ready")
    assert set(ready.json()["backends"]) == {"pub"}


def test_request_limits(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket})
    config["server"]["security_limits"] = {
        "max_uri_length": 256,
        "max_header_size": 1024,
        "max_body_size": 16,
    }
    running = proxy(config)
    phrases = {
        414: "URI Too Long",
        431: "Request Header Fields Too Large",
        413: "Content Too Large",
    }
    responses = [
        running.get("/pub/" + "a" * 300),
        running.get("/pub/x", headers={"X-Filler": "f" * 2000}),
        running.request("GET", "/pub/x", body=b"b" * 17),
    ]
    for response, status in zip(responses, phrases, strict=True):
        assert (response.status, response.reason) == (status, phrases[status])
        assert response.json()["status"] == status
        assert response.json()["error"] == phrases[status]


def test_cors_through_twistd(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    seeded: dict[str, str],
) -> None:
    entry = bucket_config(
        moto_s3,
        "pub",
        s3_bucket,
        cors={
            "allowed_origins": ["http://app.test:3000"],
            "allowed_headers": ["Range"],
            "max_age": 60,
        },
    )
    running = proxy({"buckets": [entry]})
    preflight = running.request(
        "OPTIONS",
        "/pub/hello.txt",
        headers={
            "Origin": "http://app.test:3000",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Range",
        },
    )
    assert preflight.status == 204
    assert preflight.header("Access-Control-Allow-Origin") == "http://app.test:3000"
    get = running.get("/pub/hello.txt", headers={"Origin": "http://app.test:3000"})
    assert get.header("Access-Control-Allow-Origin") == "http://app.test:3000"
    other = running.get("/pub/hello.txt", headers={"Origin": "http://evil.test"})
    assert other.status == 200 and other.header("Access-Control-Allow-Origin") is None


def test_json_access_log_has_request_fields(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    seeded: dict[str, str],
) -> None:
    running = proxy(make_proxy_config({"pub": s3_bucket}, logging={"format": "json"}))
    running.get("/pub/hello.txt?token=query-secret", headers={"X-Request-ID": "log-me-1"})

    def access_events() -> list[dict[str, Any]]:
        events = []
        for line in running.log_text().splitlines():
            line = line.strip().lstrip("\x1e")
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("request_id") == "log-me-1":
                    events.append(event)
        return events

    wait_until(lambda: bool(access_events()), timeout=10, what="access log event")
    event = access_events()[0]
    assert event["bucket"] == "pub"
    assert event["object_key"] == "hello.txt"
    assert event["status"] == 200
    assert event["bytes_sent"] == 12
    assert event["duration_ms"] >= 0
    assert "query-secret" not in running.settled_log_text()


def test_ipv6_listener(
    tmp_path: Path,
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    seeded: dict[str, str],
) -> None:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    config = make_proxy_config({"pub": s3_bucket})
    config["server"] = {"address": "::1", "port": port}
    path = write_config(config, tmp_path / "v6.yaml")
    with open(tmp_path / "v6.log", "wb") as log:
        process = subprocess.Popen(
            twistd_command("-n", "yatagarasu", "--config", str(path)),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def answer() -> bytes:
            with socket.create_connection(("::1", port), timeout=5) as conn:
                conn.sendall(b"GET /pub/hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
                chunks = []
                for _ in range(100):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                return b"".join(chunks)

        def serving() -> bool:
            try:
                return answer().startswith(b"HTTP/1.0 200")
            except OSError:
                return False

        wait_until(serving, timeout=30, what="proxy answering on [::1]")
        assert answer().endswith(b"\r\n\r\nhello world\n")
    finally:
        process.kill()
        process.wait(10)


def test_http_request_helper_is_loopback_only() -> None:
    with pytest.raises(ValueError):
        http_request("GET", "https://example.com/")

"""Tests of the integration harness itself: moto really checks SigV4, redis can be killed and
restarted, the proxy fixture runs the real twistd plugin."""

from __future__ import annotations

import hashlib
import signal
import socket
from pathlib import Path

import pytest
import pytest_twisted

from devharness.http_client import http_request
from devharness.moto_s3 import MotoS3Server
from devharness.ports import free_port
from devharness.redis_server import RedisServer
from devharness.twistd import clean_exit
from devharness.waiting import wait_until

pytestmark = pytest.mark.integration


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_moto_rejects_unsigned_requests(moto_s3: MotoS3Server, s3_bucket: str) -> None:
    moto_s3.put_object(s3_bucket, "secret.txt", b"top secret")
    url = f"{moto_s3.endpoint_url}/{s3_bucket}/secret.txt"

    unsigned = http_request("GET", url)

    assert unsigned.status == 403
    assert b"top secret" not in unsigned.body
    assert http_request("HEAD", url).status == 403


def test_moto_rejects_a_wrong_signature(moto_s3: MotoS3Server, s3_bucket: str) -> None:
    from botocore.exceptions import ClientError

    moto_s3.put_object(s3_bucket, "k", b"v")
    bad = moto_s3.client("s3", secret_key="not-the-secret")

    with pytest.raises(ClientError) as info:
        bad.get_object(Bucket=s3_bucket, Key="k")

    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_moto_signed_round_trip_keeps_bytes(moto_s3: MotoS3Server, s3_bucket: str) -> None:
    body = bytes(range(256)) * 1024 + b"\r\n\x00tail"
    key = "docs/read me ü+%.bin"

    etag = moto_s3.put_object(s3_bucket, key, body, content_type="application/octet-stream")

    assert etag == '"' + hashlib.md5(body).hexdigest() + '"'
    assert moto_s3.get_object(s3_bucket, key) == body
    head = moto_s3.s3.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == etag
    assert head["ContentType"] == "application/octet-stream"


def test_moto_user_without_permissions_is_denied(moto_s3: MotoS3Server, s3_bucket: str) -> None:
    from botocore.exceptions import ClientError

    moto_s3.put_object(s3_bucket, "k", b"v")
    access, secret = moto_s3.create_credentials("nobody-" + s3_bucket)
    client = moto_s3.client("s3", access_key=access, secret_key=secret)

    with pytest.raises(ClientError) as info:
        client.get_object(Bucket=s3_bucket, Key="k")

    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert http_request("GET", moto_s3.probe_url).status == 403  # auth is back on


def test_moto_counts_requests_per_key(moto_s3: MotoS3Server, s3_bucket: str) -> None:
    moto_s3.put_object(s3_bucket, "a b.txt", b"1")
    moto_s3.put_object(s3_bucket, "other.txt", b"2")

    for _ in range(3):
        moto_s3.get_object(s3_bucket, "a b.txt")
    moto_s3.s3.head_object(Bucket=s3_bucket, Key="a b.txt")
    moto_s3.get_object(s3_bucket, "other.txt")
    http_request("GET", f"{moto_s3.endpoint_url}/{s3_bucket}/a%20b.txt")  # unsigned, rejected

    gets = moto_s3.requests("GET", s3_bucket, "a b.txt")
    assert len(gets) == 4
    assert [r.signed for r in gets] == [True, True, True, False]
    assert moto_s3.count_requests("HEAD", s3_bucket, "a b.txt") == 1
    assert moto_s3.count_requests("GET", s3_bucket, "other.txt") == 1
    assert moto_s3.count_requests("PUT", s3_bucket, "a b.txt") == 1


def test_redis_kill_and_restart(redis_server: RedisServer) -> None:
    assert redis_server.ping()
    assert redis_server.command("SET", "k", "v") == b"+OK"

    redis_server.kill()

    with pytest.raises(ConnectionRefusedError):
        redis_server.command("PING")
    assert not redis_server.ping()

    redis_server.restart()

    assert redis_server.ping()
    assert redis_server.command("GET", "k") == b"$-1"  # restarted empty (no persistence)


def test_redis_freeze_makes_calls_hang(redis_server: RedisServer) -> None:
    redis_server.freeze()
    try:
        with pytest.raises(TimeoutError):
            redis_server.command("PING", timeout=0.3)
    finally:
        redis_server.thaw()
    wait_until(redis_server.ping, timeout=5.0, what="redis to answer after SIGCONT")


def test_redis_factory_gives_separate_servers(redis_factory) -> None:
    first, second = redis_factory(), redis_factory()

    assert first.port != second.port
    first.kill()
    assert second.ping()


def test_proxy_serves_health_and_an_object(
    proxy, make_proxy_config, moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    body = b"hello through the proxy\n"
    etag = moto_s3.put_object(s3_bucket, "hello.txt", body, content_type="text/plain")
    running = proxy(make_proxy_config({"public": s3_bucket}))

    health = running.get("/health")
    assert health.status == 200
    assert health.json()["status"] == "healthy"
    got = running.get("/public/hello.txt")
    assert (got.status, got.body, got.header("ETag")) == (200, body, etag)
    assert moto_s3.count_requests("GET", s3_bucket, "hello.txt") >= 1

    code = running.stop(signal.SIGTERM)

    assert clean_exit(code), f"exit code {code}\n{running.log_text()}"


def test_twistd_check_reports_good_and_bad_configs(
    twistd_check, make_proxy_config, s3_bucket: str
) -> None:
    good = twistd_check(make_proxy_config({"public": s3_bucket}, port=free_port()))
    bad = twistd_check({"server": {"prot": 8080}})

    assert (good.returncode, good.timed_out, good.daemonized_pid) == (0, False, None), good.output
    assert bad.returncode not in (0, None), bad.output
    assert "server.prot" in bad.output
    assert bad.daemonized_pid is None


@pytest_twisted.ensureDeferred
async def test_reactor_fixture_runs_deferreds(reactor) -> None:
    from twisted.internet.task import deferLater

    assert await deferLater(reactor, 0.01, lambda: 42) == 42

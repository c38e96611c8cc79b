"""Operating the real process: --check, bad configs, graceful shutdown, TLS."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.certificates import write_self_signed
from devharness.moto_s3 import MotoS3Server
from devharness.ports import free_port
from devharness.proxy_config import write_config
from devharness.twistd import (
    ProxyProcess,
    TwistdResult,
    check_config,
    clean_exit,
    run_twistd,
    twistd_command,
)
from devharness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_check_prints_summary_and_exits_zero(
    twistd_check: Callable[..., TwistdResult],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket}, port=free_port())
    result = twistd_check(config)
    assert result.returncode == 0, result.output
    assert "configuration OK" in result.output
    assert f"/pub -> s3://{s3_bucket}" in result.output


def test_numbers_and_booleans_come_from_the_environment(
    tmp_path: Path, make_proxy_config: Callable[..., dict[str, Any]], s3_bucket: str
) -> None:
    port = free_port()
    config = make_proxy_config({"pub": s3_bucket}, port=port)
    config["server"]["port"] = "${YG_TEST_PORT}"
    config["metrics"] = {"enabled": "${YG_TEST_METRICS:-false}"}
    result = check_config(config, tmp_path, env={"YG_TEST_PORT": str(port)})
    assert result.returncode == 0, result.output
    assert f":{port}" in result.output and "metrics: disabled" in result.output


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda c: c["buckets"][0]["s3"].update(timout=5),
            "buckets[0].s3.timout: unknown key (did you mean 'timeout'?)",
        ),
        (
            lambda c: c.update(
                audit_log={
                    "enabled": True,
                    "outputs": ["s3"],
                    "s3_export": {"bucket": "audit", "spool_dir": "/tmp/x", "endpoint": "s3"},
                }
            ),
            "audit_log.s3_export.endpoint: expected http(s)://host[:port]",
        ),
        (lambda c: c["buckets"][0].update(path_prefix="/health"), "buckets[0].path_prefix"),
        (
            lambda c: c["buckets"][0]["s3"].update(bucket="${NOT_SET_ANYWHERE}"),
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            lambda c: c["server"].update(tls={"cert_path": "/nonexistent.pem", "key_path": "/x"}),
            "server.tls.cert_path: cannot load certificates",
        ),
        (
            lambda c: c.update(logging={"file": "/nonexistent-dir/yatagarasu/proxy.log"}),
            "logging.file: cannot create '/nonexistent-dir/yatagarasu/proxy.log': its directory",
        ),
        (
            lambda c: c.update(
                cache={
                    "enabled": True,
                    "cache_layers": ["disk"],
                    "disk": {"enabled": True, "cache_dir": "/etc/passwd/cache"},
                }
            ),
            "cache.disk.cache_dir: cannot create '/etc/passwd/cache': '/etc/passwd' is not a",
        ),
    ],
)
def test_bad_config_stops_before_listening_with_one_line(
    tmp_path: Path,
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    mutate: Callable[[dict[str, Any]], None],
    needle: str,
) -> None:
    port = free_port()
    config = make_proxy_config({"pub": s3_bucket}, port=port)
    mutate(config)
    path = write_config(config, tmp_path / "bad.yaml")
    for args in (["--check"], []):
        # Without -n twistd would daemonize: a bad config must stop it before that too.
        result = run_twistd(["yatagarasu", "--config", str(path), *args], tmp_path, timeout=30)
        assert result.returncode == 1, result.output
        assert not result.timed_out and result.daemonized_pid is None
        assert needle in result.output
        assert "Traceback" not in result.output
        error_lines = [
            line for line in result.output.splitlines() if "invalid configuration" in line
        ]
        assert len(error_lines) == 1


def test_port_in_use_fails_startup(
    tmp_path: Path,
    running_proxy: ProxyProcess,
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket}, port=running_proxy.port)
    path = write_config(config, tmp_path / "clash.yaml")
    result = run_twistd(["-n", "--pidfile=", "yatagarasu", "--config", str(path)], tmp_path)
    assert result.returncode == 1
    assert "cannot listen on" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def running_proxy(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> ProxyProcess:
    return proxy(make_proxy_config({"pub": s3_bucket}))


def test_sigterm_drains_in_flight_download(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = os.urandom(1024 * 1024) * 24
    moto_s3.put_object(s3_bucket, "slow.bin", body)
    config = make_proxy_config({"pub": s3_bucket})
    config["server"].update(shutdown_delay_seconds=2, shutdown_grace_seconds=60)
    running = proxy(config)
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    conn.request("GET", "/pub/slow.bin")
    response = conn.getresponse()
    assert response.status == 200
    first = response.read(64 * 1024)  # the rest waits in socket buffers: a slow client
    running.send_signal(signal.SIGTERM)

    def shutting_down() -> bool:
        ready = running.get("/ready", timeout=5)
        return ready.status == 503 and ready.json()["status"] == "shutting_down"

    wait_until(shutting_down, timeout=10, what="/ready to report shutting_down")
    rest = response.read()
    conn.close()
    assert first + rest == body
    code = running.wait(timeout=60)
    assert clean_exit(code), code
    assert "shutdown complete" in running.log_text()


def test_sigterm_aborts_downloads_that_outlive_the_grace(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = b"z" * (32 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "huge.bin", body)
    config = make_proxy_config({"pub": s3_bucket})
    config["server"].update(shutdown_grace_seconds=1)
    running = proxy(config)
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    conn.request("GET", "/pub/huge.bin")
    response = conn.getresponse()
    response.read(1024)
    running.send_signal(signal.SIGTERM)
    code = running.wait(timeout=60)
    assert clean_exit(code), code
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        for _ in range(10_000):
            if not response.read(1024 * 1024):
                raise ConnectionError("closed")
    conn.close()
    expected = "aborted 1 connection(s) still open after 1s (1 request(s) in flight)"
    assert expected in running.log_text()


def test_sighup_reloads_and_is_not_fatal(running_proxy: ProxyProcess) -> None:
    running_proxy.send_signal(signal.SIGHUP)
    running_proxy.wait_for_log("configuration reloaded: generation 2")
    assert running_proxy.get("/health").status == 200


@contextlib.contextmanager
def https_proxy(
    tmp_path: Path, config: dict[str, Any], name: str
) -> Iterator[tuple[int, ssl.SSLContext]]:
    """
    Run twistd with ``config`` behind a self-signed ``localhost`` certificate, wait until
    ``GET /health`` answers 200 over HTTPS, and yield its port and a context trusting it.
    """
    cert_path, key_path = write_self_signed(tmp_path)
    port = config["server"]["port"]
    config["server"]["tls"] = {"cert_path": str(cert_path), "key_path": str(key_path)}
    path = write_config(config, tmp_path / f"{name}.yaml")
    with open(tmp_path / f"{name}.log", "wb") as log:
        process = subprocess.Popen(
            twistd_command("-n", "--pidfile=", "yatagarasu", "--config", str(path)),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    context = ssl.create_default_context(cafile=str(cert_path))
    try:

        def serving() -> bool:
            conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
            try:
                conn.request("GET", "/health")
                return conn.getresponse().status == 200
            except OSError:
                return False
            finally:
                conn.close()

        wait_until(serving, timeout=30, what=f"HTTPS listener ({name})")
        yield port, context
    finally:
        process.kill()
        process.wait(10)


def test_https_listener(
    tmp_path: Path,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "secure.txt", b"over tls\n")
    config = make_proxy_config({"pub": s3_bucket}, port=free_port())
    with https_proxy(tmp_path, config, "tls") as (port, context):
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        try:
            conn.request("GET", "/pub/secure.txt")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"over tls\n")
        finally:
            conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/health")
            plain.getresponse().read()
        plain.close()


def test_large_memory_hits_over_tls_are_whole(
    tmp_path: Path,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    """A body kept in a memory file goes through TLS as a copy (no ``sendfile`` there)."""
    body = os.urandom(300_000)
    moto_s3.put_object(s3_bucket, "big.bin", body, CacheControl="max-age=600")
    config = make_proxy_config({"pub": s3_bucket}, port=free_port())
    config["cache"] = {"enabled": True, "cache_layers": ["memory"]}
    with https_proxy(tmp_path, config, "tls") as (port, context):
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)

        def fetch() -> str | None:
            conn.request("GET", "/pub/big.bin")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, body)
            return response.getheader("X-Cache")

        try:
            assert fetch() == "MISS"
            wait_until(lambda: fetch() == "HIT", timeout=10, what="the memory entry to be stored")
            assert [fetch(), fetch()] == ["HIT", "HIT"]
        finally:
            conn.close()


def test_https_upstream_certificate_is_verified(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    """An https endpoint whose certificate is not trusted is refused (502), never used."""
    moto_s3.put_object(s3_bucket, "k.txt", b"secret\n")
    # An HTTPS "S3" with a self-signed certificate: another proxy in front of moto.
    front = make_proxy_config({s3_bucket: s3_bucket}, port=free_port())
    with https_proxy(tmp_path, front, "front") as (tls_port, _):
        running = proxy(
            {
                "buckets": [
                    {
                        "name": "pub",
                        "path_prefix": "/pub",
                        "s3": {
                            "bucket": s3_bucket,
                            "endpoint": f"https://localhost:{tls_port}",
                            "access_key": "AKID",
                            "secret_key": "secret",
                            "retry": {"max_attempts": 1},
                        },
                    }
                ]
            }
        )
        response = running.get("/pub/k.txt", timeout=30)
        assert response.status == 502
        assert b"secret" not in response.body
        assert "certificate" in response.json()["message"].lower()

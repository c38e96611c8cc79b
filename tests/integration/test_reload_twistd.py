"""Hot reload through the real twistd and moto: SIGHUP, ``POST /admin/reload``, and under load."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import yaml

from devharness.certificates import write_self_signed
from devharness.get_load import GetLoad
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.proxy_config import bucket_config, write_config
from devharness.twistd import ProxyProcess, launch_proxy
from devharness.waiting import wait_until

SECRET = "reload-secret-" + "r" * 48
ADMIN_CLAIMS = [{"claim": "role", "operator": "equals", "value": "admin"}]
RELOADED = "configuration reloaded: generation"
FAILED = "configuration reload failed"


def admin() -> dict[str, str]:
    payload = {"sub": "ops", "role": "admin", "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(payload, SECRET, algorithm='HS256')}"}


def rewrite(running: ProxyProcess, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the running proxy's configuration file in place (its port stays)."""
    document = yaml.safe_load(running.config_path.read_text())
    change(document)
    write_config(document, running.config_path)


def sighup_and_wait(running: ProxyProcess) -> None:
    before = running.reloads_finished()
    running.send_signal(signal.SIGHUP)
    wait_until(lambda: running.reloads_finished() > before, timeout=30, what="the reload")


def base_config(moto: MotoS3Server, s3_bucket: str) -> dict[str, Any]:
    return {
        "jwt": {"secret": SECRET, "admin_claims": ADMIN_CLAIMS},
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 16}},
        "buckets": [
            bucket_config(moto, "pub", s3_bucket),
            bucket_config(moto, "raw", s3_bucket, cache={"enabled": False}),
        ],
    }


def test_sighup_applies_a_new_bucket_and_logs_the_dotted_path_of_an_error(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"alpha")
    running = proxy(base_config(moto_s3, s3_bucket))
    assert running.get("/two/a.txt").status == 404
    assert running.get("/pub/a.txt").header("X-Cache") == "MISS"

    rewrite(running, lambda d: d["buckets"].append(bucket_config(moto_s3, "two", s3_bucket)))
    sighup_and_wait(running)
    assert f"{RELOADED} 2; buckets added ['two']" in running.log_text()
    assert running.get("/two/a.txt").body == b"alpha"
    assert running.get("/pub/a.txt").header("X-Cache") == "HIT"  # the memory layer was kept

    rewrite(running, lambda d: d["buckets"][1].update(bogus=1))
    sighup_and_wait(running)
    (line,) = [line for line in running.log_text().splitlines() if FAILED in line]
    assert "still serving generation 2: buckets[1].bogus: unknown key" in line
    assert running.get("/two/a.txt").body == b"alpha"  # generation 2 still serves
    assert running.metric('yatagarasu_config_reloads_total{result="error"}') == 1.0
    assert running.metric('yatagarasu_config_reloads_total{result="ok"}') == 1.0
    assert running.metric("yatagarasu_config_generation") == 2.0


def test_admin_reload_reports_changes_and_refuses_a_listener_change(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    running = proxy(base_config(moto_s3, s3_bucket))
    assert running.request("POST", "/admin/reload").status == 401

    def swap(document: dict[str, Any]) -> None:
        document["buckets"][0]["path_prefix"] = "/moved"
        document["buckets"][1] = bucket_config(moto_s3, "new", s3_bucket)

    rewrite(running, swap)
    applied = running.request("POST", "/admin/reload", headers=admin())
    assert applied.status == 200, applied.body
    assert applied.json() == {
        "status": "success",
        "generation": 2,
        "buckets": {"added": ["new"], "removed": ["raw"], "changed": ["pub"]},
    }
    moto_s3.put_object(s3_bucket, "m.txt", b"moved")
    assert running.get("/moved/m.txt").body == b"moved"
    assert running.get("/pub/m.txt").status == 404

    port = running.port
    rewrite(running, lambda d: d["server"].update(port=port + 1))
    refused = running.request("POST", "/admin/reload", headers=admin())
    assert refused.status == 400
    assert refused.json()["message"] == (
        f"server.port: changed from {port} to {port + 1}; listener changes need a restart"
    )
    assert refused.json()["request_id"] == refused.header("X-Request-ID")
    assert running.get("/moved/m.txt").body == b"moved"


def test_twenty_reloads_under_load_fail_no_request(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    for name in ("cached.txt", "other.txt"):
        moto_s3.put_object(s3_bucket, name, name.encode() * 100)
    # No access log: the log stays small however many requests the load sends.
    running = proxy({**base_config(moto_s3, s3_bucket), "logging": {"level": "warning"}})
    original = yaml.safe_load(running.config_path.read_text())

    def valid_a(document: dict[str, Any]) -> None:
        document.clear()
        document.update(original)

    def valid_b(document: dict[str, Any]) -> None:
        valid_a(document)
        document["buckets"] = [
            *original["buckets"],
            bucket_config(moto_s3, "extra", s3_bucket, cache={"enabled": False}),
        ]
        document["cache"] = {"enabled": True, "memory": {"max_cache_size_mb": 32}}

    def invalid(document: dict[str, Any]) -> None:
        valid_a(document)
        document["buckets"] = [*original["buckets"], {"name": "broken"}]

    paths = ["/pub/cached.txt", "/raw/other.txt", "/extra/other.txt", "/pub/other.txt"]
    plan = [valid_b, invalid, valid_a] * 7
    with GetLoad(running.address, running.port, paths) as load:
        wait_until(lambda: load.total >= 50, timeout=60, what="the load to start")
        for i, change in enumerate(plan[:20]):
            rewrite(running, change)
            if i % 2:
                answer = running.request("POST", "/admin/reload", headers=admin(), timeout=30)
                assert answer.status == (400 if change is invalid else 200), answer.body
            else:
                sighup_and_wait(running)
            seen = load.total
            wait_until(
                lambda seen=seen: load.total >= seen + 20, timeout=60, what="load between reloads"
            )
    print(f"load: {load.statuses} over 20 reloads")
    assert load.errors == []
    assert set(load.statuses) <= {200, 404}, load.statuses
    assert load.statuses[200] > 100
    assert 404 in load.statuses  # /extra answered 404 in the generations without it
    invalid_count = sum(1 for change in plan[:20] if change is invalid)
    assert running.metric('yatagarasu_config_reloads_total{result="error"}') == invalid_count
    assert running.metric('yatagarasu_config_reloads_total{result="ok"}') == 20 - invalid_count
    assert running.metric("yatagarasu_config_generation") == 21 - invalid_count


def served_certificate(port: int) -> bytes:
    """:returns: the DER certificate a new TLS connection to the proxy gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only look at which certificate it is
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_reads_the_tls_files_again(
    tmp_path: Path, make_proxy_config: Callable[..., dict[str, Any]], s3_bucket: str
) -> None:
    cert_path, key_path = write_self_signed(tmp_path)
    port = free_port()
    config = make_proxy_config({"pub": s3_bucket}, port=port)
    config["server"]["tls"] = {"cert_path": str(cert_path), "key_path": str(key_path)}
    running = launch_proxy(config, tmp_path)
    try:
        wait_until(lambda: bool(served_certificate(port)), timeout=30, what="the TLS listener")
        first = served_certificate(port)
        write_self_signed(tmp_path)  # a new key and certificate at the same paths
        running.send_signal(signal.SIGHUP)
        wait_until(lambda: f"{RELOADED} 2" in running.log_text(), timeout=30, what="reload")
        second = served_certificate(port)
        assert second != first
        assert second == ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    finally:
        running.kill()

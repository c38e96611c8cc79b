"""``metrics: {enabled, address, port}`` through the real ``twistd -n yatagarasu``."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from prometheus_client.parser import text_string_to_metric_families

from devharness.http_client import HttpResponse, http_request
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.proxy_config import write_config
from devharness.twistd import ProxyProcess, TwistdResult, run_twistd
from devharness.waiting import wait_until


def scrape(port: int, path: str = "/metrics") -> HttpResponse:
    return http_request("GET", f"http://{LOOPBACK}:{port}{path}", timeout=10)


def sample(response: HttpResponse, name: str, **labels: str) -> float:
    """:returns: the value of the sample ``name`` whose labels include ``labels`` (0 if none)."""
    for family in text_string_to_metric_families(response.body.decode()):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return 0.0


def requests_total(response: HttpResponse, bucket: str, status: str) -> float:
    return sample(response, "yatagarasu_requests_total", bucket=bucket, status=status)


def test_metrics_port_serves_prometheus_text_counting_the_main_port(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "hello.txt", b"hello world\n")
    metrics_port = free_port()
    config = make_proxy_config({"pub": s3_bucket})
    config["metrics"] = {"enabled": True, "port": metrics_port}
    running = proxy(config)
    before = requests_total(scrape(metrics_port), "pub", "200")
    for _ in range(3):
        assert running.get("/pub/hello.txt").body == b"hello world\n"
    scraped = scrape(metrics_port)
    assert scraped.status == 200
    assert (scraped.header("content-type") or "").startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(scraped.body.decode())}
    assert {"yatagarasu_requests", "yatagarasu_request_duration_seconds"} <= names
    assert requests_total(scraped, "pub", "200") == before + 3
    assert scraped.header("x-request-id")
    assert f"metrics served on http://127.0.0.1:{metrics_port}/metrics" in running.log_text()

    on_main = running.get("/metrics")
    assert on_main.status == 404
    assert on_main.json()["request_id"] == on_main.header("x-request-id")
    for path in ("/health", "/pub/hello.txt"):
        other = scrape(metrics_port, path)
        assert other.status == 404, path
        assert other.json()["request_id"] == other.header("x-request-id")
        assert other.json()["message"] == "this listener serves /metrics only"
    assert running.get("/health").status == 200  # the main port keeps its own routes


def reactor_lag_count(response: HttpResponse) -> float:
    return sample(response, "yatagarasu_reactor_lag_seconds_count")


def test_the_reactor_lag_is_measured_all_the_time(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    metrics_port = free_port()
    config = make_proxy_config({"pub": s3_bucket})
    config["metrics"] = {"enabled": True, "port": metrics_port}
    proxy(config)
    first = reactor_lag_count(scrape(metrics_port))
    wait_until(
        lambda: reactor_lag_count(scrape(metrics_port)) >= first + 2,
        timeout=30,
        what="two more reactor-lag samples",
    )
    scraped = scrape(metrics_port).body.decode()
    assert 'yatagarasu_reactor_lag_seconds_bucket{le="+Inf"}' in scraped


SECRET = "metrics-listener-admin-secret-of-32-bytes-or-more"


def admin_token() -> dict[str, str]:
    payload = {"sub": "ops", "role": "admin", "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(payload, SECRET, algorithm='HS256')}"}


def test_serve_admin_moves_the_admin_api_to_the_metrics_listener(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"admin elsewhere\n")
    metrics_port = free_port()
    config = make_proxy_config(
        {"pub": s3_bucket},
        cache={"enabled": True},
        jwt={
            "secret": SECRET,
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
    )
    config["metrics"] = {"port": metrics_port, "serve_admin": True}
    running = proxy(config)
    assert running.get("/pub/a.txt").body == b"admin elsewhere\n"
    on_main = running.get("/admin/cache/stats", headers=admin_token())
    assert on_main.status == 404
    assert running.request("POST", "/admin/reload", headers=admin_token()).status == 404
    url = f"http://{LOOPBACK}:{metrics_port}"
    stats = http_request("GET", url + "/admin/cache/stats", headers=admin_token(), timeout=10)
    assert stats.status == 200
    assert stats.json()["data"]["current_item_count"] == 1
    assert http_request("GET", url + "/admin/cache/stats", timeout=10).status == 401
    reload = http_request("POST", url + "/admin/reload", headers=admin_token(), timeout=10)
    assert reload.status == 200, reload.body
    assert scrape(metrics_port).status == 200
    elsewhere = scrape(metrics_port, "/pub/a.txt")
    assert elsewhere.status == 404
    assert elsewhere.json()["message"] == "this listener serves /metrics and the admin API only"
    assert f"metrics served on http://127.0.0.1:{metrics_port}/metrics and the admin API" in (
        running.log_text()
    )


def test_metrics_disabled_answers_404(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket})
    config["metrics"] = {"enabled": False}
    running = proxy(config)
    response = running.get("/metrics")
    assert response.status == 404
    assert response.json()["status"] == 404


def test_check_reports_where_metrics_are_served(
    twistd_check: Callable[..., TwistdResult],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket}, port=8080)
    config["metrics"] = {"enabled": True, "port": 9090}  # as in the v1.x configs
    result = twistd_check(config)
    assert result.returncode == 0, result.output
    assert "metrics: http://127.0.0.1:9090/metrics" in result.output
    assert "on the metrics listener only" not in result.output
    config["metrics"]["serve_admin"] = True
    moved = twistd_check(config)
    assert moved.returncode == 0, moved.output
    assert "admin API: /admin/... (disabled, answers 403) on the metrics listener only" in (
        moved.output
    )


def test_check_refuses_the_main_port(
    twistd_check: Callable[..., TwistdResult],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket}, port=8080)
    config["metrics"] = {"port": 8080}
    result = twistd_check(config)
    assert result.returncode == 1, result.output
    errors = [line for line in result.output.splitlines() if "invalid configuration" in line]
    assert len(errors) == 1
    assert "metrics.port: 8080 is the main listener's port" in errors[0]
    assert "Traceback" not in result.output


def test_metrics_port_in_use_fails_startup(
    tmp_path: Path,
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen(1)
        metrics_port = int(busy.getsockname()[1])
        config = make_proxy_config({"pub": s3_bucket}, port=free_port())
        config["metrics"] = {"port": metrics_port}
        path = write_config(config, tmp_path / "busy.yaml")
        result = run_twistd(["-n", "--pidfile=", "yatagarasu", "--config", str(path)], tmp_path)
    assert result.returncode == 1, result.output
    assert f"cannot listen on 127.0.0.1:{metrics_port} (metrics)" in result.output
    assert "Traceback" not in result.output

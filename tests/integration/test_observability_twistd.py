"""
Metrics and request logging through the real ``twistd -n yatagarasu`` against moto: counters
before and after a hit, a miss, a 401, a 404 and an upstream error; every metric the Grafana
dashboard queries exists in a scrape; ``observability.request_logging`` filters and redacts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from prometheus_client.parser import text_string_to_metric_families

from devharness.moto_s3 import MotoS3Server
from devharness.ports import free_port
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "etc" / "grafana" / "yatagarasu-dashboard.json"
SECRET = "observability-integration-secret-" + "y" * 40
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def token(**claims: Any) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def samples(running: ProxyProcess) -> Samples:
    text = running.get("/metrics").body.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    """:returns: the sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= ls)


def start(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    tmp_path: Path,
    **top_level: Any,
) -> ProxyProcess:
    moto_s3.put_object(s3_bucket, "a.txt", b"observed\n")
    down = bucket_config(moto_s3, "down", s3_bucket)
    down["s3"].update({"endpoint": f"http://127.0.0.1:{free_port()}", "retry": {"max_attempts": 1}})
    buckets = [
        bucket_config(moto_s3, "pub", s3_bucket, cache={"enabled": True}),
        bucket_config(moto_s3, "priv", s3_bucket, jwt={"enabled": True, "secret": SECRET}),
        down,
    ]
    config: dict[str, Any] = {
        "server": {"address": "127.0.0.1", "port": 0},
        "buckets": buckets,
        "cache": {"memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1}},
        "audit_log": {
            "enabled": True,
            "outputs": ["file"],
            "file": {"path": str(tmp_path / "audit" / "audit.log")},
        },
        **top_level,
    }
    return proxy(config)


def test_counters_move_by_the_right_amounts(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    running = start(proxy, moto_s3, s3_bucket, tmp_path)
    requests = "yatagarasu_requests_total"
    durations = "yatagarasu_request_duration_seconds_count"
    upstream = "yatagarasu_upstream_requests_total"
    upstream_seconds = "yatagarasu_upstream_request_duration_seconds_count"
    auth = "yatagarasu_auth_results_total"

    def step(send: Callable[[], int], expected: int) -> tuple[Samples, Samples]:
        before = samples(running)
        assert send() == expected
        return before, samples(running)

    def delta(pair: tuple[Samples, Samples], name: str, **labels: str) -> float:
        return value(pair[1], name, **labels) - value(pair[0], name, **labels)

    miss = step(lambda: running.get("/pub/a.txt").status, 200)
    assert delta(miss, requests, bucket="pub", method="GET", status="200", status_class="2xx") == 1
    assert delta(miss, durations, bucket="pub", cache="miss") == 1
    assert delta(miss, durations, bucket="pub", cache="hit") == 0
    assert delta(miss, upstream, bucket="pub", outcome="2xx") == 1
    assert delta(miss, upstream_seconds, bucket="pub") == 1
    assert delta(miss, "yatagarasu_response_body_bytes_total", bucket="pub") == len(b"observed\n")
    assert delta(miss, "yatagarasu_cache_misses_total", bucket="pub") == 1

    hit = step(lambda: running.get("/pub/a.txt").status, 200)
    assert delta(hit, requests, bucket="pub", status="200") == 1
    assert delta(hit, durations, bucket="pub", cache="hit") == 1
    assert delta(hit, upstream, bucket="pub") == 0  # answered from memory
    assert delta(hit, "yatagarasu_cache_hits_total", bucket="pub", layer="memory") == 1

    not_found = step(lambda: running.get("/pub/none.txt").status, 404)
    assert delta(not_found, requests, bucket="pub", status="404", status_class="4xx") == 1
    assert delta(not_found, upstream, bucket="pub", outcome="4xx") == 1
    assert delta(not_found, requests, status_class="2xx", bucket="pub") == 0

    unauthorized = step(lambda: running.get("/priv/a.txt").status, 401)
    assert delta(unauthorized, requests, bucket="priv", status="401") == 1
    assert delta(unauthorized, auth, bucket="priv", result="missing") == 1
    assert delta(unauthorized, upstream, bucket="priv") == 0
    bad = {"Authorization": "Bearer not.a.token"}
    invalid = step(lambda: running.get("/priv/a.txt", headers=bad).status, 401)
    assert delta(invalid, auth, bucket="priv", result="invalid") == 1
    good = {"Authorization": f"Bearer {token()}"}
    allowed = step(lambda: running.get("/priv/a.txt", headers=good).status, 200)
    assert delta(allowed, auth, bucket="priv", result="ok") == 1
    assert delta(allowed, auth, bucket="priv") == 1
    assert delta(allowed, upstream, bucket="priv", outcome="2xx") == 1

    failed = step(lambda: running.get("/down/a.txt").status, 502)
    assert delta(failed, requests, bucket="down", status="502", status_class="5xx") == 1
    assert delta(failed, upstream, bucket="down", outcome="error") == 1
    assert delta(failed, upstream, bucket="down") == 1  # max_attempts: 1
    assert delta(failed, upstream, bucket="pub") == 0

    now = samples(running)
    assert value(now, "yatagarasu_requests_in_flight") == 1  # the scrape itself
    assert value(now, "yatagarasu_connections_open") >= 1
    (build,) = [labels for name, labels in now if name == "yatagarasu_build_info"]
    assert dict(build)["version"] == running.get("/health").json()["version"]
    assert {"python", "twisted"} <= dict(build).keys()


#: PromQL words that are not metric names
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}


def queried_metrics(expression: str) -> set[str]:
    """
    :param expression: a PromQL expression.
    :returns: the metric names it selects: identifiers that are not functions (followed by
        ``(``), keywords, label names of ``by (...)``, label matchers, ranges or numbers.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # label values, escapes included
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "", text)  # numbers: 0.95, 1e-9
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_queried_metrics_parser() -> None:
    expression = (
        "histogram_quantile(0.95, sum by (le, cache) (rate(yatagarasu_request_duration_seconds"
        '_bucket{bucket=~"$bucket",x="a}b"}[$__rate_interval]))) / clamp_min(sum(rate('
        "yatagarasu_cache_hits_total[5m])) + max(yatagarasu_config_generation), 1e-9)"
    )
    assert queried_metrics(expression) == {
        "yatagarasu_request_duration_seconds_bucket",
        "yatagarasu_cache_hits_total",
        "yatagarasu_config_generation",
    }


def test_every_metric_the_dashboard_queries_is_in_a_scrape(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    queried = set().union(*(queried_metrics(e) for e in expressions))
    for variable in variables:  # label_values(metric, label)
        selected = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable)
        assert selected is not None, variable
        queried.add(selected.group(1))
    assert len(expressions) >= 15 and all(n.startswith("yatagarasu_") for n in queried), queried
    running = start(proxy, moto_s3, s3_bucket, tmp_path)
    for path in ("/pub/a.txt", "/pub/a.txt", "/pub/none.txt", "/priv/a.txt", "/down/a.txt"):
        running.get(path)
    running.get("/priv/a.txt", headers={"Authorization": f"Bearer {token()}"})

    def scraped_names() -> set[str]:
        return {name for name, _ in samples(running)}

    wait_until(  # audit records are counted once the file sink has flushed them (1 s)
        lambda: "yatagarasu_audit_records_total" in scraped_names(),
        timeout=15,
        what="audit record counts",
    )
    missing = queried - scraped_names()
    assert not missing, f"the dashboard queries metrics no scrape has: {sorted(missing)}"


def test_request_logging_filters_and_redacts_the_access_log(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    running = start(
        proxy,
        moto_s3,
        s3_bucket,
        tmp_path,
        logging={"format": "json"},
        observability={
            "request_logging": {
                "log_requests": True,
                "log_responses": True,
                "include_paths": ["/pub/*", "/priv/*", "/health"],
                "exclude_paths": ["/health"],
                "status_codes": [200, 401],
                "redact_headers": ["x-customer-ref"],
            }
        },
    )
    secret = token()
    ids = {
        "hit": running.get("/pub/a.txt").header("x-request-id"),
        "token": running.get(
            f"/priv/a.txt?access_token={secret}&page=1",
            headers={
                "Authorization": f"Bearer {secret}",
                "X-Customer-Ref": "customer-4711",
                "Referer": f"https://app.example/?token={secret}",
            },
        ).header("x-request-id"),
        "missing": running.get("/pub/none.txt").header("x-request-id"),  # 404: not listed
        "health": running.get("/health").header("x-request-id"),  # excluded
        "down": running.get("/down/a.txt").header("x-request-id"),  # not included
        "last": running.get("/pub/a.txt").header("x-request-id"),
    }
    wait_until(lambda: ids["last"] in running.log_text(), timeout=10, what="the last request")
    wait_until(  # its access event, written after its arrival event
        lambda: running.log_text().count(ids["last"]) >= 2, timeout=10, what="the last event"
    )
    log = running.log_text()
    lines = [line.strip("\x1e \n") for line in log.splitlines()]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    access = {e["request_id"]: e for e in events if e["log_namespace"] == "yatagarasu.access"}
    arrived = {e["request_id"]: e for e in events if e["log_namespace"] == "yatagarasu.request"}
    assert set(access) == {ids["hit"], ids["token"], ids["last"]}
    assert set(arrived) == {ids["hit"], ids["token"], ids["missing"], ids["last"]}
    with_token = arrived[ids["token"]]
    assert with_token["target"] == "/priv/a.txt?access_token=[REDACTED]&page=1"
    headers = with_token["request_headers"]
    assert headers["authorization"] == "[REDACTED]"
    assert headers["x-customer-ref"] == "[REDACTED]"
    assert headers["referer"] == "https://app.example/?token=[REDACTED]"
    assert access[ids["token"]]["status"] == 200
    response_headers = access[ids["hit"]]["response_headers"]
    assert response_headers["x-request-id"] == ids["hit"]
    assert response_headers["content-length"] == str(len(b"observed\n"))
    assert secret not in log and secret.split(".")[2] not in log
    assert "customer-4711" not in log

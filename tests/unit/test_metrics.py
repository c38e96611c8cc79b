"""Metrics (yatagarasu.metrics): what is counted and how /metrics renders it."""

from __future__ import annotations

import platform

from prometheus_client.parser import text_string_to_metric_families

import twisted
from tests.unit.auth.jwt_kit import NOW, SECRET, token
from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu import __version__


def test_metrics_endpoint() -> None:
    h = cached()
    fetch(h, "/pub/a.txt?secret=1", answer=obj())
    fetch(h, "/pub/a.txt")
    _, transport = h.get("/metrics")
    response = parse_response(transport.value())
    text = response.body.decode()
    assert response.status == 200
    assert 'yatagarasu_cache_hits_total{bucket="pub",layer="memory"} 1.0' in text
    assert 'yatagarasu_cache_misses_total{bucket="pub"} 1.0' in text
    assert 'yatagarasu_cache_items{layer="memory"} 1.0' in text
    get200 = 'bucket="pub",method="GET",status="200",status_class="2xx"'
    assert f"yatagarasu_requests_total{{{get200}}} 2.0" in text
    assert "a.txt" not in text and "127.0.0.1" not in text
    ours = [
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    ]
    assert all(name.startswith(("yatagarasu_", "process_", "python_")) for name in ours)


def test_metrics_are_counted_and_rendered_from_plain_numbers() -> None:
    h = Harness({"cache": {"enabled": True}, "buckets": [bucket_entry()]})
    h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"body"))
    h.get("/pub/k")
    h.get("/pub/k", method="PATCH")
    _, transport = h.get("/metrics")
    families = {
        f.name: f
        for f in text_string_to_metric_families(parse_response(transport.value()).body.decode())
    }
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("yatagarasu_cache_hits_total", (("bucket", "pub"), ("layer", "memory")))] == 1
    assert samples[("yatagarasu_cache_misses_total", (("bucket", "pub"),))] == 1
    get200 = (("bucket", "pub"), ("method", "GET"), ("status", "200"), ("status_class", "2xx"))
    assert samples[("yatagarasu_requests_total", get200)] == 2
    patch = (("bucket", "pub"), ("method", "other"), ("status", "405"), ("status_class", "4xx"))
    assert samples[("yatagarasu_requests_total", patch)] == 1
    assert samples[("yatagarasu_response_body_bytes_total", (("bucket", "pub"),))] > 8
    by_cache = {}
    for cache in ("miss", "hit", "none"):  # the 405 was refused before the cache
        buckets = [
            s
            for s in families["yatagarasu_request_duration_seconds"].samples
            if s.name.endswith("_bucket")
            and (s.labels["bucket"], s.labels["cache"]) == ("pub", cache)
        ]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
        by_cache[cache] = counts[-1]
    assert by_cache == {"miss": 1, "hit": 1, "none": 1}
    lookups = families["yatagarasu_cache_get_duration_seconds"].samples
    assert any(s.name.endswith("_count") and s.value == 2 for s in lookups)
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)


def _samples(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, transport = h.get("/metrics")
    text = parse_response(transport.value()).body.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_upstream_attempts_are_counted_by_outcome_with_their_duration() -> None:
    retrying = {
        "first_byte_timeout": 2,
        "retry": {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10},
    }
    h = Harness({"buckets": [bucket_entry(s3=retrying)]})
    agent = h.agents["pub"]
    h.get("/pub/a")
    h.clock.advance(0.25)
    agent.answer(FakeResponse(500, {}, body=b""))
    h.clock.advance(0.01)  # the backoff, then the second attempt
    h.clock.advance(0.5)
    agent.answer(FakeResponse(404, {}, body=b""))
    h.get("/pub/b")
    h.clock.advance(2)  # the first-byte timeout, twice
    h.clock.advance(0.01)
    h.clock.advance(2)
    samples = _samples(h)
    pub = ("bucket", "pub")
    assert samples[("yatagarasu_upstream_requests_total", (pub, ("outcome", "5xx")))] == 1
    assert samples[("yatagarasu_upstream_requests_total", (pub, ("outcome", "4xx")))] == 1
    assert samples[("yatagarasu_upstream_requests_total", (pub, ("outcome", "timeout")))] == 2
    count = samples[("yatagarasu_upstream_request_duration_seconds_count", (pub,))]
    total = samples[("yatagarasu_upstream_request_duration_seconds_sum", (pub,))]
    assert count == 4
    assert total >= 0.25 + 0.5 + 2 * 1  # each timed-out attempt lasted its timeout


def test_auth_results_are_counted_per_bucket() -> None:
    h = Harness(
        {
            "buckets": [
                bucket_entry(
                    jwt={
                        "enabled": True,
                        "secret": SECRET,
                        "claims": [{"claim": "role", "operator": "in", "value": ["reader"]}],
                    }
                )
            ]
        }
    )
    h.clock.advance(NOW)
    h.get("/pub/k")
    h.get("/pub/k", "Authorization: Bearer garbage")
    h.get("/pub/k", "Authorization: Bearer garbage")
    h.get("/pub/k", f"Authorization: Bearer {token(SECRET, 'HS256')}")
    h.get("/pub/k", f"Authorization: Bearer {token(SECRET, 'HS256', {'role': 'reader'})}")
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"ok"))
    samples = _samples(h)
    counted = {
        dict(labels)["result"]: value
        for (name, labels), value in samples.items()
        if name == "yatagarasu_auth_results_total"
    }
    assert counted == {"missing": 1, "invalid": 2, "forbidden": 1, "ok": 1}


def test_in_flight_requests_and_build_info() -> None:

    h = Harness({"buckets": [bucket_entry()]})
    h.get("/pub/slow-1")
    h.get("/pub/slow-2")
    samples = _samples(h)
    # the two waiting for S3, and the scrape itself
    assert samples[("yatagarasu_requests_in_flight", ())] == 3
    assert samples[("yatagarasu_connections_open", ())] == 3
    for _ in range(2):
        h.agents["pub"].answer(FakeResponse(200, {}, body=b"x"), index=0)
        h.agents["pub"].sent.pop(0)
    assert _samples(h)[("yatagarasu_requests_in_flight", ())] == 1
    info = (
        ("python", platform.python_version()),
        ("twisted", twisted.__version__),
        ("version", __version__),
    )
    assert samples[("yatagarasu_build_info", info)] == 1

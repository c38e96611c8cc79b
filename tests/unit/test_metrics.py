"""Metrics (yatagarasu.metrics): what is counted and how /metrics renders it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response


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
    assert 'yatagarasu_requests_total{bucket="pub",method="GET",status="200"} 2.0' in text
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
    get200 = (("bucket", "pub"), ("method", "GET"), ("status", "200"))
    assert samples[("yatagarasu_requests_total", get200)] == 2
    patch = (("bucket", "pub"), ("method", "other"), ("status", "405"))
    assert samples[("yatagarasu_requests_total", patch)] == 1
    assert samples[("yatagarasu_response_body_bytes_total", (("bucket", "pub"),))] > 8
    buckets = [
        s
        for s in families["yatagarasu_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["bucket"] == "pub"
    ]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 3 and buckets[-1].labels["le"] == "+Inf"
    lookups = families["yatagarasu_cache_get_duration_seconds"].samples
    assert any(s.name.endswith("_count") and s.value == 2 for s in lookups)
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)

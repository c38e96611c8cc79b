"""Metrics (yatagarasu.metrics): what is counted and how /metrics renders it."""

from __future__ import annotations

from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import parse_response


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

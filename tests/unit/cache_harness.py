"""The in-memory proxy with a memory cache, shared by the cache, web and http unit tests."""

from __future__ import annotations

from typing import Any

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response

#: The harness clock starts here.
START = 1_800_000_000.0
#: The HS256 secret of the admin tokens.
SECRET = "a" * 64


def cached(*buckets: dict[str, Any], **cache: Any) -> Harness:
    settings = {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}}
    settings.update(cache)
    h = Harness(
        {
            "cache": settings,
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": list(buckets) or [bucket_entry()],
        }
    )
    h.clock.advance(START)
    return h


def fetch(
    h: Harness,
    path: str,
    *headers: str,
    method: str = "GET",
    answer: FakeResponse | None = None,
    bucket: str = "pub",
) -> Any:
    before = len(h.agents[bucket].sent)
    _, transport = h.get(path, *headers, method=method)
    if answer is not None:
        assert len(h.agents[bucket].sent) == before + 1, "expected an upstream request"
        h.agents[bucket].answer(answer)
    return parse_response(transport.value())


def obj(body: bytes = b"hello world", code: int = 200, **extra: str) -> FakeResponse:
    return FakeResponse(code, {**OBJECT, **extra}, body=body)


OBJECT = {
    "Content-Type": "text/plain",
    "ETag": '"v1"',
    "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT",
    "x-amz-request-id": "drop-me",
}

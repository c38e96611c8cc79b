"""``server.admin_path_prefix``: where the admin API is mounted, and the prefixes it reserves."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from tests.unit.fakes import Harness, bucket_entry, parse_response
from yatagarasu.config import ConfigError, parse_config

SECRET = "a" * 64
NOW = 1_800_000_000.0


def admin_harness(admin_prefix: str | None, *buckets: dict[str, Any]) -> Harness:
    server = {"admin_path_prefix": admin_prefix} if admin_prefix is not None else {}
    h = Harness(
        {
            "server": server,
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "cache": {"enabled": True},
            "buckets": list(buckets),
        }
    )
    h.clock.advance(NOW)
    return h


def admin_token() -> str:
    claims = {"sub": "ops", "role": "admin", "exp": int(NOW) + 60}
    return "Authorization: Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")


def test_admin_api_at_a_prefix_of_its_own_and_a_bucket_at_admin() -> None:
    h = admin_harness("/ops/admin", bucket_entry("adm", "/admin"), bucket_entry("root", "/"))
    _, transport = h.get("/ops/admin/cache/stats", admin_token())
    stats = parse_response(transport.value())
    assert stats.status == 200
    assert json.loads(stats.body)["status"] == "success"
    h.get("/admin/cache/stats", admin_token())
    assert [s.uri for s in h.agents["adm"].sent] == [
        b"http://127.0.0.1:9000/adm-bucket/cache/stats"
    ]
    h.get("/ops/other.txt")
    assert [s.uri for s in h.agents["root"].sent] == [
        b"http://127.0.0.1:9000/root-bucket/ops/other.txt"
    ]


def test_default_admin_prefix_shadows_a_root_bucket() -> None:
    h = admin_harness(None, bucket_entry("root", "/"))
    _, transport = h.get("/admin/cache/stats")
    assert parse_response(transport.value()).status == 401
    assert h.agents["root"].sent == []


def error_of(document: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, {})
    return caught.value


@pytest.mark.parametrize("prefix", ["/admin", "/admin/", "/admin/data"])
def test_a_bucket_at_or_under_the_admin_prefix_is_refused(prefix: str) -> None:
    error = error_of({"buckets": [bucket_entry("b", prefix)]})
    assert error.path == "buckets[0].path_prefix"
    assert "/admin, reserved for the admin API" in error.message
    assert "server.admin_path_prefix" in error.message
    moved = parse_config(
        {"server": {"admin_path_prefix": "/_admin"}, "buckets": [bucket_entry("b", prefix)]}, {}
    )
    assert moved.server.admin_segments == ("_admin",)


def test_a_bucket_under_a_moved_admin_prefix_is_refused() -> None:
    error = error_of(
        {"server": {"admin_path_prefix": "/_admin"}, "buckets": [bucket_entry("b", "/_admin/x")]}
    )
    assert error.message.startswith("'/_admin/x' is under /_admin, reserved for the admin API")


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("/", "must not be '/'"),
        ("admin", "must start with '/'"),
        ("/health", "/health is reserved for the proxy"),
        ("/metrics/admin", "/metrics is reserved for the proxy"),
        ("/a/../b", "must be a plain path"),
    ],
)
def test_bad_admin_prefixes(prefix: str, message: str) -> None:
    error = error_of({"server": {"admin_path_prefix": prefix}, "buckets": [bucket_entry()]})
    assert error.path == "server.admin_path_prefix"
    assert message in error.message

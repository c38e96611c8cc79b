"""``server.rate_limit`` (the Rust keys and ours), ``rate_limiting``, per-bucket limits."""

from __future__ import annotations

from typing import Any

import pytest

from yatagarasu.config import ConfigError, parse_config


def document(server_limits: Any = None, *, top: Any = None, **bucket: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "pub", "path_prefix": "/pub", "s3": {"bucket": "b"}}
    entry.update(bucket)
    doc: dict[str, Any] = {"buckets": [entry]}
    if server_limits is not None:
        doc["server"] = {"rate_limit": server_limits}
    if top is not None:
        doc["rate_limiting"] = top
    return doc


def error_of(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    return info.value


def test_the_rust_keys_load_unchanged_with_our_defaults() -> None:
    config = parse_config(
        document(
            {
                "enabled": True,
                "global": {"requests_per_second": 1000},
                "per_ip": {"requests_per_second": 2.5},
            }
        ),
        {},
    )
    limits = config.rate_limit
    assert limits is not None and limits.global_ is not None and limits.per_ip is not None
    assert (limits.global_.requests_per_second, limits.global_.capacity) == (1000.0, 1000)
    assert limits.per_ip.capacity == 3  # one second's worth, rounded up
    assert (limits.algorithm, limits.backend, limits.fail_mode) == (
        "token_bucket",
        "local",
        "fail_open",
    )
    assert not limits.headers_on_allowed


def test_burst_and_the_other_spellings() -> None:
    rule = {"requests_per_second": 1, "burst": 7}
    config = parse_config(document(top={"per_user": rule}), {})
    assert config.rate_limit is not None and config.rate_limit.per_user is not None
    assert config.rate_limit.per_user.capacity == 7
    for spelling in ({"rate_limit": rule}, {"s3": {"bucket": "b", "rate_limit": rule}}):
        bucket = parse_config(document(**spelling), {}).buckets[0]
        assert bucket.bucket_rate is not None and bucket.bucket_rate.capacity == 7


def test_disabled_means_no_limits() -> None:
    config = parse_config(document({"enabled": False, "per_ip": {"requests_per_second": 1}}), {})
    assert config.rate_limit is None
    defaults = parse_config(document(), {}).rate_limit
    assert defaults is not None and defaults.per_ip is None and defaults.global_ is None


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (
            document({"per_ip": {"requests_per_second": 0}}),
            "server.rate_limit.per_ip.requests_per_second",
        ),
        (
            document({"global": {"requests_per_second": 1, "burst": 0}}),
            "server.rate_limit.global.burst",
        ),
        (document({"global_": {"requests_per_second": 1}}), "server.rate_limit.global_"),
        (document({"algorithm": "leaky"}), "server.rate_limit.algorithm"),
        (document({"backend": "redis"}), "server.rate_limit.redis"),
        (document({"backend": "redis", "redis": {}}), "server.rate_limit.redis.redis_url"),
        (document({"redis": {"redis_url": "redis://127.0.0.1"}}), "server.rate_limit.redis"),
        (document({"max_keys": 0}), "server.rate_limit.max_keys"),
        (
            document({"backend": "redis", "redis": {"redis_url": "redis+sentinel://h:1/m"}}),
            "server.rate_limit.redis.redis_url",
        ),
        (document({"fail_mode": "open"}), "server.rate_limit.fail_mode"),
        (document({}, top={}), "rate_limiting"),
        (
            document(
                rate_limit={"requests_per_second": 1},
                s3={"bucket": "b", "rate_limit": {"requests_per_second": 1}},
            ),
            "buckets[0].rate_limit",
        ),
    ],
)
def test_bad_values_name_their_key(doc: dict[str, Any], path: str) -> None:
    assert error_of(doc).path == path


def test_unknown_key_hint_uses_the_yaml_spelling() -> None:
    error = error_of(document({"globl": {"requests_per_second": 1}}))
    assert "did you mean 'global'" in error.message

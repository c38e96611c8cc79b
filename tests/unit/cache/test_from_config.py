"""
Building the cache from the config (yatagarasu.cache.from_config): errors with dotted paths, the
example.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.unit.fakes import bucket_entry
from yatagarasu import plugins
from yatagarasu.cache.from_config import build_cache
from yatagarasu.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("cache", "path", "needle"),
    [
        (
            {"enabled": True, "cache_layers": ["memory", "nvme"]},
            "cache.cache_layers[1]",
            "disk, memory, redis",
        ),
        (
            {"enabled": True, "cache_layers": ["memory", "memory"]},
            "cache.cache_layers[1]",
            "listed twice",
        ),
        (
            {"enabled": True, "cache_layers": ["memory", "disk"], "disk": {"cache_dir": "/tmp/x"}},
            "cache.disk.enabled",
            "must be true",
        ),
        (
            {"enabled": True, "disk": {"enabled": True, "cache_dir": "/tmp/x"}},
            "cache.disk.enabled",
            "not listed",
        ),
        ({"enabled": True, "ttl_secnds": 5}, "cache.ttl_secnds", "did you mean 'ttl_seconds'"),
        (
            {"enabled": True, "memory": {"max_item_size_mb": 50, "max_cache_size_mb": 10}},
            "cache.memory",
            "",
        ),
        ({"enabled": True, "cache_layers": []}, "cache.cache_layers", "at least one"),
    ],
)
def test_cache_config_errors(cache: dict[str, Any], path: str, needle: str) -> None:
    config = parse_config({"cache": cache, "buckets": [bucket_entry()]}, {})
    with pytest.raises(ConfigError) as info:
        build_cache(config, Clock(), plugins)
    assert info.value.path.startswith(path)
    assert needle in str(info.value)


def test_seed_cache_example_loads() -> None:
    document = {
        "cache": {
            "enabled": True,
            "memory": {
                "max_item_size_mb": 10,
                "max_cache_size_mb": 1024,
                "default_ttl_seconds": 3600,
            },
            "disk": {
                "enabled": False,
                "cache_dir": "/var/cache/yatagarasu",
                "max_disk_cache_size_mb": 10240,
            },
            "redis": {
                "enabled": False,
                "redis_url": "${REDIS_URL}",
                "redis_password": "${REDIS_PASSWORD}",
                "redis_db": 0,
                "key_prefix": "yatagarasu:",
                "ttl_seconds": 3600,
            },
            "cache_layers": ["memory"],
        },
        "buckets": [
            {
                "name": "products",
                "path_prefix": "/products",
                "s3": {"bucket": "p"},
                "cache": {"ttl_seconds": 7200, "max_item_size_mb": 5},
            }
        ],
    }
    config = parse_config(document, {"REDIS_URL": "", "REDIS_PASSWORD": ""})
    setup = build_cache(config, Clock(), plugins)
    assert setup.cache is not None
    assert [layer.name for layer in setup.cache.layers] == ["memory"]
    policy = setup.policies["products"]
    assert (policy.ttl, policy.max_item_size) == (7200, 5 * 1024 * 1024)


@pytest.mark.parametrize(
    ("cache", "bucket_cache", "path", "needle"),
    [
        ({"enabled": True, "slice_size_mb": -1}, None, "cache.slice_size_mb", ">= 0"),
        ({"enabled": True, "slice_threshold_mb": 0}, None, "cache.slice_threshold_mb", "> 0"),
        ({"enabled": True, "slice_size_mb": 20}, None, "cache.slice_size_mb", "item cap"),
        (
            {"enabled": True},
            {"slice_size_mb": 2, "max_item_size_mb": 1},
            "buckets[0].cache.slice_size_mb",
            "item cap",
        ),
        ({"enabled": True, "slice_size_mb": 10}, None, "cache.slice_size_mb", "4 KiB"),
        (
            {"enabled": True, "slice_size_mb": 4, "slice_threshold_mb": 2},
            None,
            "cache.slice_threshold_mb",
            "at least the slice size",
        ),
        ({"enabled": True}, {"slice_size_mb": -2}, "buckets[0].cache.slice_size_mb", ">= 0"),
    ],
)
def test_slicing_config_errors(
    cache: dict[str, Any], bucket_cache: dict[str, Any] | None, path: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        entry = bucket_entry(**({"cache": bucket_cache} if bucket_cache else {}))
        config = parse_config({"cache": cache, "buckets": [entry]}, {})
        build_cache(config, Clock(), plugins)
    assert info.value.path == path
    assert needle in str(info.value)


def test_slicing_defaults_and_overrides() -> None:
    document = {
        "cache": {"enabled": True, "memory": {"max_item_size_mb": 10}},
        "buckets": [
            bucket_entry("a", "/a"),
            bucket_entry("b", "/b", cache={"max_item_size_mb": 1}),
            bucket_entry("c", "/c", cache={"slice_size_mb": 2, "slice_threshold_mb": 3}),
            bucket_entry("d", "/d", cache={"slice_size_mb": 0}),
        ],
    }
    policies = build_cache(parse_config(document, {}), Clock(), plugins).policies
    mib = 1024 * 1024
    sizes = {n: (p.slice_size, p.slice_threshold, p.slices) for n, p in policies.items()}
    assert sizes == {
        "a": (4 * mib, 10 * mib, True),
        "b": (1 * mib - 4096, 1 * mib, True),
        "c": (2 * mib, 3 * mib, True),
        "d": (0, 10 * mib, False),
    }

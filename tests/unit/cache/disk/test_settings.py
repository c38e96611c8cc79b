"""The disk layer's settings, its factory and its plugin: checked without I/O or threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from yatagarasu import plugins
from yatagarasu.cache.disk import DiskCacheFactory
from yatagarasu.cache.disk.settings import DiskCacheSettings
from yatagarasu.config.typed import from_raw
from yatagarasu.discovery import find
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import ICacheLayer, ICacheLayerFactory

MIB = 1024 * 1024


def test_plugin_is_discoverable_and_builds_without_io(tmp_path: Path) -> None:
    from yatagarasu.plugins import cache_disk

    factory = find(ICacheLayerFactory, "disk", "cache.cache_layers[1]", plugins)
    assert factory is cache_disk.disk
    assert verifyObject(ICacheLayerFactory, factory)
    cache_dir = tmp_path / "not-yet"
    layer = factory.build({"cache_dir": str(cache_dir)}, "cache.disk", MemoryReactorClock())
    assert verifyObject(ICacheLayer, layer)
    assert layer.name == "disk"
    assert not cache_dir.exists()  # from_raw() neither scans nor creates anything


def test_settings_defaults_and_alias(tmp_path: Path) -> None:
    assert DiskCacheSettings().cache_dir == "/var/cache/yatagarasu"
    settings = from_raw(DiskCacheSettings, {"cache_dir": str(tmp_path)}, "cache.disk")
    assert settings.enabled is False
    assert settings.max_size == 10240 * MIB
    assert settings.max_item_size == settings.max_size
    aliased = from_raw(
        DiskCacheSettings,
        {"disk_cache_enabled": True, "max_disk_cache_size_mb": 1.5, "max_item_size_mb": 1},
        "cache.disk",
    )
    assert aliased.enabled is True
    assert aliased.max_size == int(1.5 * MIB)
    assert aliased.max_item_size == MIB


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"cache_dir": ""}, "cache.disk.cache_dir"),
        ({"cache_dir": "   "}, "cache.disk.cache_dir"),
        ({"cache_dir": ["a"]}, "cache.disk.cache_dir"),
        ({"max_disk_cache_size_mb": 0}, "cache.disk.max_disk_cache_size_mb"),
        ({"max_disk_cache_size_mb": -5}, "cache.disk.max_disk_cache_size_mb"),
        ({"max_disk_cache_size_mb": "big"}, "cache.disk.max_disk_cache_size_mb"),
        ({"max_item_size_mb": 0}, "cache.disk.max_item_size_mb"),
        (
            {"max_disk_cache_size_mb": 10, "max_item_size_mb": 11},
            "cache.disk.max_item_size_mb",
        ),
        ({"enabled": "yes"}, "cache.disk.enabled"),
        ({"cache_directory": "/tmp/x"}, "cache.disk.cache_directory"),
    ],
)
def test_factory_validation_errors_carry_dotted_paths(
    settings: dict[str, Any], path: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        DiskCacheFactory().build(
            {"cache_dir": str(tmp_path), **settings}, "cache.disk", MemoryReactorClock()
        )
    assert caught.value.path == path


def test_a_cache_dir_the_process_could_not_create_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as caught:
        from_raw(DiskCacheSettings, {"cache_dir": str(blocker / "cache")}, "cache.disk")
    assert caught.value.path == "cache.disk.cache_dir"
    assert "is not a directory" in caught.value.message
    settings = from_raw(DiskCacheSettings, {"cache_dir": str(tmp_path / "x" / "y")}, "cache.disk")
    assert settings.cache_dir == str(tmp_path / "x" / "y")
    assert not (tmp_path / "x").exists()  # checked, not created

"""The disk layer's settings (``cache.disk``), checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from yatagarasu.config.paths import cannot_make_directory
from yatagarasu.config.typed import join
from yatagarasu.errors import ConfigError
from yatagarasu.values import MIB


@dataclass(frozen=True)
class DiskCacheSettings:
    """
    ``cache.disk``: the disk layer's settings.

    :ivar enabled: whether the layer may be used (the tiered cache refuses a layer listed in
        ``cache.cache_layers`` whose ``enabled`` is false). Alias ``disk_cache_enabled``.
    :ivar cache_dir: the directory of the entry files (created when missing).
    :ivar max_disk_cache_size_mb: the bound on the bytes of all entry files, MiB.
    :ivar max_item_size_mb: the largest body the layer accepts, MiB (default: the bound).
    """

    enabled: bool = field(default=False, metadata={"aliases": ("disk_cache_enabled",)})
    cache_dir: str = "/var/cache/yatagarasu"
    max_disk_cache_size_mb: float = 10240.0
    max_item_size_mb: float | None = None

    def check(self, path: str) -> None:
        """
        :param path: dotted key path of these settings.
        :raises ConfigError: on an empty directory or one the process could not create or
            write to, a size that is not positive or an item cap larger than the bound.
        """
        if not self.cache_dir.strip():
            raise ConfigError(join(path, "cache_dir"), "must not be empty")
        if "\0" in self.cache_dir:
            raise ConfigError(join(path, "cache_dir"), "must not contain NUL characters")
        problem = cannot_make_directory(self.cache_dir)
        if problem is not None:
            raise ConfigError(join(path, "cache_dir"), problem)
        if self.max_disk_cache_size_mb <= 0:
            raise ConfigError(
                join(path, "max_disk_cache_size_mb"),
                f"must be > 0, got {self.max_disk_cache_size_mb:g}",
            )
        if self.max_item_size_mb is not None:
            if self.max_item_size_mb <= 0:
                raise ConfigError(
                    join(path, "max_item_size_mb"), f"must be > 0, got {self.max_item_size_mb:g}"
                )
            if self.max_item_size_mb > self.max_disk_cache_size_mb:
                raise ConfigError(
                    join(path, "max_item_size_mb"),
                    f"must be <= max_disk_cache_size_mb ({self.max_disk_cache_size_mb:g}), "
                    f"got {self.max_item_size_mb:g}",
                )

    @property
    def max_size(self) -> int:
        """The bound, in bytes."""
        return int(self.max_disk_cache_size_mb * MIB)

    @property
    def max_item_size(self) -> int:
        """The largest body, in bytes."""
        if self.max_item_size_mb is None:
            return self.max_size
        return int(self.max_item_size_mb * MIB)

"""
The disk layer's directory walks (blocking: run in a thread): the start-up scan that rebuilds
the index and cleans the directory, and the sweep that a purge runs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.logger import Logger

from yatagarasu.cache.disk.files import (
    fsync_dir,
    read_named_entry,
    remove_if_same,
    remove_orphan_temp,
)
from yatagarasu.cache.disk.format import (
    TEMP_PREFIX,
    CorruptEntry,
    entry_path,
    is_entry_name,
    is_fanout_name,
)
from yatagarasu.values import CacheKey

#: The package's one log namespace (as when the layer was one module).
log = Logger(namespace="yatagarasu.cache.disk")


@dataclass(slots=True)
class Record:
    """What the index knows of an entry file."""

    key: CacheKey
    size: int
    retain_until: float


@dataclass(slots=True)
class Counters:
    """Items, bytes and lookups of the layer or of one bucket."""

    items: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass
class ScanReport:
    """What a scan of the cache directory found (built in a thread, applied on the reactor)."""

    #: every valid entry by digest, least recently used first (by file times).
    index: OrderedDict[str, Record] = field(default_factory=OrderedDict)
    #: items and bytes per bucket.
    buckets: dict[str, Counters] = field(default_factory=dict)
    temp_removed: int = 0
    corrupt_removed: int = 0
    expired_removed: int = 0
    stray_removed: int = 0
    temp_kept: int = 0


def _entry_files(root: str) -> Iterable[tuple[str, str, str]]:
    """Yield ``(directory, name, path)`` for every file in the fan-out directories."""
    with os.scandir(root) as level1:
        firsts = [
            e.name for e in level1 if is_fanout_name(e.name) and e.is_dir(follow_symlinks=False)
        ]
    for first in sorted(firsts):
        d1 = os.path.join(root, first)
        try:
            with os.scandir(d1) as level2:
                seconds = [
                    e.name
                    for e in level2
                    if is_fanout_name(e.name) and e.is_dir(follow_symlinks=False)
                ]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for second in sorted(seconds):
            d2 = os.path.join(d1, second)
            try:
                with os.scandir(d2) as files:
                    names = [e.name for e in files if not e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                yield d2, name, os.path.join(d2, name)


def scan(root: str, now: float) -> ScanReport:
    """
    Rebuild the index from the files and clean the directory (blocking: run in a thread).

    :param root: ``cache_dir`` (created when missing).
    :param now: wall-clock time, for ``retain_until``.
    :returns: the valid entries and what was removed.
    """
    report = ScanReport()
    found: list[tuple[float, str, Record]] = []
    os.makedirs(root, mode=0o700, exist_ok=True)
    for directory, name, path in _entry_files(root):
        if name.startswith(TEMP_PREFIX):
            if remove_orphan_temp(path):
                report.temp_removed += 1
            else:
                report.temp_kept += 1
            continue
        if not (is_entry_name(name) and os.path.dirname(entry_path(root, name)) == directory):
            if remove_if_same(path, None):
                report.stray_removed += 1
            continue
        try:
            meta, inode, st = read_named_entry(name, path)
        except FileNotFoundError:
            continue
        except CorruptEntry as exc:
            log.info("disk cache: removing corrupt entry {path}: {reason}", path=path, reason=exc)
            if remove_if_same(path, None):
                report.corrupt_removed += 1
            continue
        if meta.retain_until <= now:
            if remove_if_same(path, inode):
                report.expired_removed += 1
            continue
        recency = max(st.st_atime, st.st_mtime)
        found.append((recency, name, Record(meta.key, st.st_size, meta.retain_until)))
    found.sort(key=lambda item: item[0])
    for _, digest, record in found:
        report.index[digest] = record
        counters = report.buckets.get(record.key.bucket)
        if counters is None:
            counters = report.buckets[record.key.bucket] = Counters()
        counters.items += 1
        counters.bytes += record.size
    return report


def matches(key: CacheKey, bucket: str | None, prefix: str | None) -> bool:
    """
    :param key: a cached key.
    :param bucket: a bucket name, or ``None`` for every key.
    :param prefix: with a bucket, only keys starting with it (``None``: every key of it).
    :returns: whether a purge of ``bucket``/``prefix`` covers ``key``.
    """
    if bucket is None:
        return True
    return key.bucket == bucket and (prefix is None or key.key.startswith(prefix))


def sweep(root: str, bucket: str | None, prefix: str | None) -> tuple[set[str], int]:
    """
    Remove every entry file matching ``bucket``/``prefix`` (blocking: run in a thread).

    Entries written by other processes are found too. Corrupt entries are removed on the way;
    temp files are left to their writers (whose writes the purge has cancelled).

    :returns: the digests removed, and how many corrupt files were removed.
    """
    removed: set[str] = set()
    corrupt = 0
    directories: set[str] = set()
    if not os.path.isdir(root):
        return removed, corrupt
    for directory, name, path in _entry_files(root):
        if not is_entry_name(name):
            continue
        if bucket is None:
            if remove_if_same(path, None):
                removed.add(name)
                directories.add(directory)
            continue
        try:
            meta, inode, _ = read_named_entry(name, path)
        except FileNotFoundError:
            continue
        except CorruptEntry:
            if remove_if_same(path, None):
                corrupt += 1
            continue
        if matches(meta.key, bucket, prefix) and remove_if_same(path, inode):
            removed.add(name)
            directories.add(directory)
    for directory in directories:
        fsync_dir(directory)
    return removed, corrupt

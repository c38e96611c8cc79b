"""
The disk cache layer: one file per entry, an in-memory index rebuilt from the files on start.

**Layout.** ``cache_dir/ab/cd/<digest>`` where ``<digest>`` is :attr:`CacheKey.digest` (hex
SHA-256 of the key text) and ``ab``/``cd`` are its first two byte pairs. Directories are
created ``0o700`` and files ``0o600`` (cached objects may come from private buckets).

**File format** (version 1). The metadata is a *trailer*, so that a body streamed to a temp
file while it is served is committed by appending the metadata and renaming -- no second pass
over the body::

    prelude  8 bytes   b"YTGC", version (u16 big-endian) = 1, reserved (u16) = 0
    body     n bytes   the object, exactly as served
    header   h bytes   UTF-8 JSON: {"bucket", "key", "variant", "headers": [[name, value]...]
                       (latin-1 strings: HTTP header bytes round-trip exactly), "stored_at",
                       "expires_at", "retain_until", "revalidate"}
    footer  20 bytes   body length n (u64), header length h (u32), CRC-32 of the header (u32),
                       b"YTGE"

A file is valid when both magics and the version match, ``8 + n + h + 20`` is its size (a
truncated file fails this), the header's CRC and JSON shape are right and the key it names
hashes to the file's name (corruption and collisions are detected). The body itself carries no
checksum (checking it would mean reading every byte at start). A hit is returned as
``FileBody(path, 8, n)``: it is served with a producer, never read whole here.

**Writes** go to ``.tmp-<random>`` in the entry's directory, are ``fsync``'d, then
``os.replace``'d onto the final name (atomic: readers see the old entry or the new one, never
a torn one). The temp file is ``flock``'d while it is written, which is how the start-up scan
tells a live writer's temp file (another worker process) from an orphan. The directory is
``fsync``'d after unlinks made by ``delete``/``purge`` (a purge must not be undone by a crash)
and after creating a fan-out directory; not after every rename: losing the last renames in a
crash only loses cache entries, and the file ``fsync`` before the rename guarantees a renamed
file is never torn.

**The index** (digest -> key, file size, ``retain_until``, recency; an ``OrderedDict`` kept
in least-recently-used order) lives only in memory. It is rebuilt by a scan of the directory
in the reactor's thread pool, started lazily by the first call to any method, or earlier by
:meth:`DiskCacheLayer.start`. ``build()`` does no I/O. The scan removes orphans, stray files,
temp files no live writer holds, corrupt or truncated entries and entries past
``retain_until``; survivors enter the index ordered by their file times. ``set``, ``delete``
and ``purge`` wait for the scan; ``get`` does not (it reads the file named by the digest).

**Threads.** Everything that writes, ``fsync``\\s, scans or unlinks runs in the reactor's
thread pool (``deferToThreadPool``); the functions run there touch no layer state (a
streaming writer's temp file is touched only by its own jobs, one at a time). ``get``
reads the metadata **inline** on the reactor thread: one ``open``, ``fstat``, one or two
``pread`` of at most 8 KiB (footer and header) and ``close`` -- a few microseconds from the
page cache, cheaper than a thread hop. At most :data:`THREADS` jobs of a layer use the pool
at once (it is shared with name resolution); more wait in a ``DeferredSemaphore``. Writes
for the same key are serialized (the last ``set`` wins); a ``delete``/``purge`` cancels
writes still in flight for the keys it covers.

**Several processes** may share the directory: renames are atomic, a file another process
deleted is a miss, a file another process wrote is found by ``get`` (the digest names it) and
then joins this process's index. Each process bounds the bytes it knows about, so the bound
is approximate when several write at once.

Hits do not touch the files, so after a restart the recency order is that of the last
writes (file times), not of the last reads.

**Caveat.** A :class:`FileBody` names a path: whoever serves it should open it at once (an
open file keeps its bytes even if an eviction or another process then removes or replaces the
entry; a path opened later may be gone -- or replaced by a newer entry whose body is at the
same offset but may differ in length).

**Errors** (disk full, permission denied, EIO, read-only file system) never reach the caller:
``get`` answers ``None``, ``set``/``delete``/``purge`` fire normally (``False``/``0``), and the
error is counted in :attr:`DiskCacheLayer.errors` and logged (at most once per 10 seconds per
operation, with the number of errors not logged since).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import struct
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from yatagarasu.config.build import build, join
from yatagarasu.errors import ConfigError, YatagarasuError
from yatagarasu.interfaces import (
    ICacheLayer,
    ICacheLayerFactory,
    ICacheWriter,
    IErrorCountingCacheLayer,
    ISwitchableCacheLayer,
)
from yatagarasu.values import CacheEntry, CacheKey, FileBody, LayerStats

log = Logger()

T = TypeVar("T")

MIB = 1024 * 1024
VERSION = 1
PRELUDE = b"YTGC" + struct.pack(">HH", VERSION, 0)
PRELUDE_SIZE = len(PRELUDE)
_FOOTER = struct.Struct(">QII4s")
FOOTER_SIZE = _FOOTER.size
FOOTER_MAGIC = b"YTGE"
TEMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")
_TAIL_READ = 8192
_COPY_CHUNK = MIB
_LOG_INTERVAL = 10.0
#: At most this many jobs of one layer run in the reactor's thread pool at once (the pool is
#: shared with name resolution; Twisted's default has 10 threads).
THREADS = 4


# --------------------------------------------------------------------------------------------
# Settings and factory


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
        :raises ConfigError: on an empty directory, a size that is not positive or an item
            cap larger than the bound.
        """
        if not self.cache_dir.strip():
            raise ConfigError(join(path, "cache_dir"), "must not be empty")
        if "\0" in self.cache_dir:
            raise ConfigError(join(path, "cache_dir"), "must not contain NUL characters")
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


@implementer(IPlugin, ICacheLayerFactory)
class DiskCacheFactory:
    """Builds :class:`DiskCacheLayer` from ``cache.disk``."""

    name = "disk"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> ICacheLayer:
        """
        :param settings: the ``cache.disk`` mapping.
        :param path: its dotted key path.
        :param reactor: the reactor (``seconds``, ``getThreadPool``).
        :returns: the layer; nothing is read or written yet.
        :raises ConfigError: naming the dotted path of a bad value.
        """
        return DiskCacheLayer(build(DiskCacheSettings, settings, path), reactor)


class DiskCacheError(YatagarasuError):
    """A streamed body could not be committed (I/O error, too large, too slow)."""


# --------------------------------------------------------------------------------------------
# The file format (pure functions and blocking I/O; safe in any thread)


class CorruptEntry(Exception):
    """
    A file in the cache directory is not a valid entry.

    :ivar inode: the file's inode number, when known (to remove that file and no newer one).
    """

    inode: int | None = None


@dataclass(frozen=True)
class _Meta:
    key: CacheKey
    headers: tuple[tuple[bytes, bytes], ...]
    stored_at: float
    expires_at: float
    retain_until: float
    revalidate: bool
    body_length: int


def encode_trailer(key: CacheKey, entry: CacheEntry, body_length: int) -> bytes:
    """
    :param key: the entry's key.
    :param entry: its headers and times (the body is not read).
    :param body_length: the body's length in bytes.
    :returns: the header JSON and the footer, to append after the body.
    """
    header = json.dumps(
        {
            "bucket": key.bucket,
            "key": key.key,
            "variant": key.variant,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in entry.headers],
            "stored_at": entry.stored_at,
            "expires_at": entry.expires_at,
            "retain_until": entry.retain_until,
            "revalidate": entry.revalidate,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    return header + _FOOTER.pack(body_length, len(header), zlib.crc32(header), FOOTER_MAGIC)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptEntry("bad number")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise CorruptEntry("bad string")
    return value


def decode_header(raw: bytes, body_length: int) -> _Meta:
    """
    :param raw: the header JSON.
    :param body_length: from the footer.
    :returns: the metadata.
    :raises CorruptEntry: when it is not a well-formed header.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise CorruptEntry(f"bad header: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptEntry("bad header")
    try:
        pairs = doc["headers"]
        if not isinstance(pairs, list):
            raise CorruptEntry("bad headers")
        headers: list[tuple[bytes, bytes]] = []
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise CorruptEntry("bad headers")
            headers.append((_string(pair[0]).encode("latin-1"), _string(pair[1]).encode("latin-1")))
        revalidate = doc["revalidate"]
        if not isinstance(revalidate, bool):
            raise CorruptEntry("bad revalidate")
        return _Meta(
            key=CacheKey(_string(doc["bucket"]), _string(doc["key"]), _string(doc["variant"])),
            headers=tuple(headers),
            stored_at=_number(doc["stored_at"]),
            expires_at=_number(doc["expires_at"]),
            retain_until=_number(doc["retain_until"]),
            revalidate=revalidate,
            body_length=body_length,
        )
    except KeyError as exc:
        raise CorruptEntry(f"header lacks {exc}") from None
    except UnicodeEncodeError:
        raise CorruptEntry("header value outside latin-1") from None


def read_meta_fd(fd: int, size: int) -> _Meta:
    """
    Read and check an entry's metadata (blocking, bounded: at most ~8 KiB for usual headers).

    :param fd: the open file.
    :param size: its size.
    :returns: the metadata.
    :raises CorruptEntry: when the file is not a complete, valid entry.
    :raises OSError: on I/O errors.
    """
    if size < PRELUDE_SIZE + FOOTER_SIZE:
        raise CorruptEntry("truncated")
    if size <= _TAIL_READ:
        whole = os.pread(fd, size, 0)
        prelude, tail = whole[:PRELUDE_SIZE], whole[PRELUDE_SIZE:]
    else:
        prelude = os.pread(fd, PRELUDE_SIZE, 0)
        tail = os.pread(fd, _TAIL_READ, size - _TAIL_READ)
    if prelude != PRELUDE:
        raise CorruptEntry("bad prelude (not an entry, or another format version)")
    if len(tail) < FOOTER_SIZE:
        raise CorruptEntry("truncated")
    body_length, header_length, crc, magic = _FOOTER.unpack(tail[-FOOTER_SIZE:])
    if magic != FOOTER_MAGIC:
        raise CorruptEntry("bad footer (truncated or corrupt)")
    if PRELUDE_SIZE + body_length + header_length + FOOTER_SIZE != size:
        raise CorruptEntry("size does not match the footer (truncated)")
    if header_length + FOOTER_SIZE > len(tail):
        tail = os.pread(fd, header_length + FOOTER_SIZE, size - header_length - FOOTER_SIZE)
        if len(tail) != header_length + FOOTER_SIZE:
            raise CorruptEntry("truncated")
    raw = tail[len(tail) - FOOTER_SIZE - header_length : len(tail) - FOOTER_SIZE]
    if zlib.crc32(raw) != crc:
        raise CorruptEntry("header checksum mismatch")
    return decode_header(raw, body_length)


def read_meta(path: str) -> tuple[_Meta, int, int]:
    """
    :param path: an entry file.
    :returns: its metadata, inode number and size.
    :raises FileNotFoundError: when there is no such file.
    :raises CorruptEntry: when it is not a valid entry.
    :raises OSError: on other I/O errors.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        try:
            return read_meta_fd(fd, st.st_size), st.st_ino, st.st_size
        except CorruptEntry as exc:
            exc.inode = st.st_ino
            raise
    finally:
        os.close(fd)


def entry_path(root: str, digest: str) -> str:
    """:returns: the file of the entry whose key has this digest."""
    return os.path.join(root, digest[:2], digest[2:4], digest)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(directory: str) -> None:
    if os.path.isdir(directory):
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    parent = os.path.dirname(directory)
    _fsync_dir(parent)
    _fsync_dir(os.path.dirname(parent))


class _TempFile:
    """A temp file being written in an entry's directory (blocking; one thread at a time)."""

    def __init__(self, directory: str) -> None:
        _ensure_dir(directory)
        self.path = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        self.size = 0
        try:
            self.write([PRELUDE])
        except BaseException:
            self.discard()
            raise

    def write(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.file.write(chunk)
            self.size += len(chunk)

    def copy_from(self, body: FileBody) -> None:
        with open(body.path, "rb") as source:
            source.seek(body.offset)
            remaining = body.length
            while remaining:
                chunk = source.read(min(remaining, _COPY_CHUNK))
                if not chunk:
                    raise CorruptEntry(f"{body.path} is shorter than its body")
                self.write([chunk])
                remaining -= len(chunk)

    def finish(self, trailer: bytes, final: str, cancelled: Callable[[], bool]) -> int | None:
        """
        Append the trailer, fsync, and rename onto ``final`` unless ``cancelled()``.

        :returns: the file's size, or ``None`` when cancelled (the temp file is removed).
        """
        try:
            self.write([trailer])
            self.file.flush()
            os.fsync(self.file.fileno())
            if cancelled():
                self.discard()
                return None
            os.replace(self.path, final)
        except BaseException:
            self.discard()
            raise
        self.file.close()
        return self.size

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _write_entry(
    root: str,
    digest: str,
    body: bytes | FileBody,
    trailer: bytes,
    cancelled: Callable[[], bool],
) -> int | None:
    final = entry_path(root, digest)
    temp = _TempFile(os.path.dirname(final))
    try:
        if isinstance(body, FileBody):
            temp.copy_from(body)
        else:
            temp.write([body])
    except BaseException:
        temp.discard()
        raise
    return temp.finish(trailer, final, cancelled)


def _remove_if_same(path: str, inode: int | None) -> bool:
    """Unlink ``path`` if it is still the file ``inode`` (``None``: whatever it is)."""
    try:
        if inode is not None and os.stat(path).st_ino != inode:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _unlink_all(paths: Iterable[str], sync: bool) -> int:
    """Unlink files (missing ones are skipped); with ``sync``, fsync their directories."""
    removed = 0
    directories: set[str] = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
            directories.add(os.path.dirname(path))
    if sync:
        for directory in directories:
            _fsync_dir(directory)
    return removed


def _remove_orphan_temp(path: str) -> bool:
    """Remove a temp file unless a live writer holds its lock. :returns: whether removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and set(name) <= _HEX


def _entry_files(root: str) -> Iterable[tuple[str, str, str]]:
    """Yield ``(directory, name, path)`` for every file in the fan-out directories."""
    with os.scandir(root) as level1:
        firsts = [e.name for e in level1 if _is_hex(e.name, 2) and e.is_dir(follow_symlinks=False)]
    for first in sorted(firsts):
        d1 = os.path.join(root, first)
        try:
            with os.scandir(d1) as level2:
                seconds = [
                    e.name for e in level2 if _is_hex(e.name, 2) and e.is_dir(follow_symlinks=False)
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


@dataclass(slots=True)
class _Record:
    key: CacheKey
    size: int
    retain_until: float


@dataclass(slots=True)
class _Counters:
    items: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass
class ScanReport:
    """What a scan of the cache directory found (built in a thread, applied on the reactor)."""

    #: every valid entry by digest, least recently used first (by file times).
    index: OrderedDict[str, _Record] = field(default_factory=OrderedDict)
    #: items and bytes per bucket.
    buckets: dict[str, _Counters] = field(default_factory=dict)
    temp_removed: int = 0
    corrupt_removed: int = 0
    expired_removed: int = 0
    stray_removed: int = 0
    temp_kept: int = 0


def _check_entry(name: str, path: str) -> tuple[_Meta, int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        meta = read_meta_fd(fd, st.st_size)
    finally:
        os.close(fd)
    if meta.key.digest != name:
        raise CorruptEntry("the key in the header does not hash to the file name")
    return meta, st.st_ino, st


def scan(root: str, now: float) -> ScanReport:
    """
    Rebuild the index from the files and clean the directory (blocking: run in a thread).

    :param root: ``cache_dir`` (created when missing).
    :param now: wall-clock time, for ``retain_until``.
    :returns: the valid entries and what was removed.
    """
    report = ScanReport()
    found: list[tuple[float, str, _Record]] = []
    os.makedirs(root, mode=0o700, exist_ok=True)
    for directory, name, path in _entry_files(root):
        if name.startswith(TEMP_PREFIX):
            if _remove_orphan_temp(path):
                report.temp_removed += 1
            else:
                report.temp_kept += 1
            continue
        if not (_is_hex(name, 64) and os.path.dirname(entry_path(root, name)) == directory):
            if _remove_if_same(path, None):
                report.stray_removed += 1
            continue
        try:
            meta, inode, st = _check_entry(name, path)
        except FileNotFoundError:
            continue
        except CorruptEntry as exc:
            log.info("disk cache: removing corrupt entry {path}: {reason}", path=path, reason=exc)
            if _remove_if_same(path, None):
                report.corrupt_removed += 1
            continue
        if meta.retain_until <= now:
            if _remove_if_same(path, inode):
                report.expired_removed += 1
            continue
        recency = max(st.st_atime, st.st_mtime)
        found.append((recency, name, _Record(meta.key, st.st_size, meta.retain_until)))
    found.sort(key=lambda item: item[0])
    for _, digest, record in found:
        report.index[digest] = record
        counters = report.buckets.get(record.key.bucket)
        if counters is None:
            counters = report.buckets[record.key.bucket] = _Counters()
        counters.items += 1
        counters.bytes += record.size
    return report


def _matches(key: CacheKey, bucket: str | None, prefix: str | None) -> bool:
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
        if not _is_hex(name, 64):
            continue
        if bucket is None:
            if _remove_if_same(path, None):
                removed.add(name)
                directories.add(directory)
            continue
        try:
            meta, inode, _ = _check_entry(name, path)
        except FileNotFoundError:
            continue
        except CorruptEntry:
            if _remove_if_same(path, None):
                corrupt += 1
            continue
        if _matches(meta.key, bucket, prefix) and _remove_if_same(path, inode):
            removed.add(name)
            directories.add(directory)
    for directory in directories:
        _fsync_dir(directory)
    return removed, corrupt


# --------------------------------------------------------------------------------------------
# The layer


@dataclass(eq=False)
class _Ticket:
    """A write in flight; a delete or purge covering its key cancels it."""

    key: CacheKey
    retain_until: float = float("inf")
    cancelled: bool = False


@implementer(ICacheLayer, ISwitchableCacheLayer, IErrorCountingCacheLayer)
class DiskCacheLayer:
    """
    The ``disk`` cache layer (see the module docstring for format, threads and errors).

    :ivar errors: I/O errors met (reads, writes, scans, unlinks), each also logged.
    :ivar evictions: entries removed to keep the size bound.
    """

    name = "disk"

    def __init__(self, settings: DiskCacheSettings, reactor: Any) -> None:
        """
        :param settings: validated ``cache.disk`` settings.
        :param reactor: provides ``seconds()`` and ``getThreadPool()``.
        """
        self.settings = settings
        self.enabled = settings.enabled
        self.root = os.path.abspath(settings.cache_dir)
        self.max_size = settings.max_size
        self.max_item_size = settings.max_item_size
        self.errors = 0
        self.evictions = 0
        self._reactor = reactor
        self._index: OrderedDict[str, _Record] = OrderedDict()
        self._total = _Counters()
        self._buckets: dict[str, _Counters] = {}
        self._scan: Deferred[None] | None = None
        self._scanned = False
        self._waiting: list[Deferred[None]] = []
        self._tails: dict[str, Deferred[None]] = {}
        self._tickets: dict[str, set[_Ticket]] = {}
        self._writers: set[DiskCacheWriter] = set()
        self._inflight: set[Deferred[Any]] = set()
        self._slots = DeferredSemaphore(THREADS)
        self._closed = False
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    # -- start-up ---------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Start the scan that rebuilds the index, if it has not started yet (every other method
        starts it too). Never fails: an unreadable directory is logged, counted, and leaves
        the index empty.

        :returns: fires when the index is ready.
        """
        if self._scan is None:
            scanning = self.in_thread(scan, self.root, self._reactor.seconds())
            self._scan = scanning.addCallback(self._scan_done).addErrback(self._scan_failed)
        if self._scanned:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _scan_done(self, report: ScanReport) -> None:
        # Nothing enters the index before the scan is done (writers wait for it, get does not
        # index), so the index built in the thread is adopted as is: O(buckets) here.
        known, self._index = self._index, report.index
        for bucket, found in report.buckets.items():
            counters = self._counters(bucket)
            counters.items += found.items
            counters.bytes += found.bytes
            self._total.items += found.items
            self._total.bytes += found.bytes
        for digest, record in known.items():
            self._remember(digest, record)
        log.info(
            "disk cache {root}: {items} entries, {size} bytes; removed {corrupt} corrupt, "
            "{expired} expired, {temp} temp and {stray} stray files",
            root=self.root,
            items=self._total.items,
            size=self._total.bytes,
            corrupt=report.corrupt_removed,
            expired=report.expired_removed,
            temp=report.temp_removed,
            stray=report.stray_removed,
            kept_temp=report.temp_kept,
        )
        self._scanned = True
        self._evict_if_needed()
        self._ready()

    def _scan_failed(self, failure: Failure) -> None:
        self._error("scan", failure, None)
        self._ready()

    def _ready(self) -> None:
        self._scanned = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    # -- helpers ----------------------------------------------------------------------------

    def in_thread(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run blocking ``f(*args)`` in the reactor's thread pool; :meth:`close` waits for it."""
        d: Deferred[T] = self._slots.run(
            deferToThreadPool, self._reactor, self._reactor.getThreadPool(), f, *args
        )
        self._inflight.add(d)

        def done(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        d.addBoth(done)
        return d

    def _run(
        self, coroutine: Coroutine[Any, Any, T], *, op: str, key: CacheKey | None, default: T
    ) -> Deferred[T]:
        """Wrap a coroutine: any exception becomes a logged, counted error and ``default``."""
        d: Deferred[T] = Deferred.fromCoroutine(coroutine)

        def failed(failure: Failure) -> T:
            self._error(op, failure, key)
            return default

        d.addErrback(failed)
        return d

    def _error(self, op: str, failure: Failure | BaseException, key: CacheKey | None) -> None:
        self.errors += 1
        now = self._reactor.seconds()
        last = self._last_logged.get(op)
        if last is not None and now - last < _LOG_INTERVAL:
            self._suppressed[op] = self._suppressed.get(op, 0) + 1
            return
        self._last_logged[op] = now
        suppressed = self._suppressed.pop(op, 0)
        value = failure.value if isinstance(failure, Failure) else failure
        log.warn(
            "disk cache {op} failed for {cache_key} in {root}: {error} "
            "({suppressed} similar errors not logged)",
            op=op,
            cache_key=key.text if key is not None else "-",
            root=self.root,
            error=f"{type(value).__name__}: {value}",
            errno=getattr(value, "errno", None),
            suppressed=suppressed,
            layer=self.name,
        )

    def _counters(self, bucket: str) -> _Counters:
        counters = self._buckets.get(bucket)
        if counters is None:
            counters = self._buckets[bucket] = _Counters()
        return counters

    def _remember(self, digest: str, record: _Record) -> None:
        old = self._index.pop(digest, None)
        if old is not None:
            self._account(old, -1)
        self._index[digest] = record
        self._account(record, +1)

    def _forget(self, digest: str) -> _Record | None:
        record = self._index.pop(digest, None)
        if record is not None:
            self._account(record, -1)
        return record

    def _account(self, record: _Record, sign: int) -> None:
        for counters in (self._total, self._counters(record.key.bucket)):
            counters.items += sign
            counters.bytes += sign * record.size

    def _evict_if_needed(self) -> None:
        victims: list[str] = []
        while self._total.bytes > self.max_size and self._index:
            digest, record = self._index.popitem(last=False)
            self._account(record, -1)
            self.evictions += 1
            self._total.evictions += 1
            self._counters(record.key.bucket).evictions += 1
            victims.append(entry_path(self.root, digest))
        if victims:
            self._background("evict", None, _unlink_all, victims, False)

    def _background(self, op: str, key: CacheKey | None, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` in the thread pool; a failure is logged and counted."""
        self.in_thread(f, *args).addErrback(lambda failure: self._error(op, failure, key))

    def _cancel(self, match: Callable[[CacheKey], bool]) -> None:
        for tickets in self._tickets.values():
            for ticket in tickets:
                if match(ticket.key):
                    ticket.cancelled = True

    def _ticket(self, key: CacheKey, digest: str) -> _Ticket:
        ticket = _Ticket(key)
        self._tickets.setdefault(digest, set()).add(ticket)
        return ticket

    def _release(self, digest: str, ticket: _Ticket) -> None:
        tickets = self._tickets.get(digest)
        if tickets is not None:
            tickets.discard(ticket)
            if not tickets:
                del self._tickets[digest]

    async def _serialized(self, digest: str, job: Callable[[], Awaitable[T]]) -> T:
        """Run ``job`` after the previous serialized job for this digest has finished."""
        previous = self._tails.get(digest)
        done: Deferred[None] = Deferred()
        self._tails[digest] = done
        try:
            if previous is not None:
                await previous
            return await job()
        finally:
            if self._tails.get(digest) is done:
                del self._tails[digest]
            done.callback(None)

    async def _committed(self, digest: str, ticket: _Ticket, size: int | None) -> bool:
        """Index a renamed file (or remove it when a delete/purge came meanwhile)."""
        self._release(digest, ticket)
        if size is None:
            return False
        path = entry_path(self.root, digest)
        if ticket.cancelled or self._closed:
            await self.in_thread(_unlink_all, [path], True)
            return False
        self._remember(digest, _Record(ticket.key, size, ticket.retain_until))
        self._evict_if_needed()
        return True

    # -- ICacheLayer ------------------------------------------------------------------------

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        """
        Look the key's file up (inline: see the module docstring). Files written by other
        processes are found; expired, corrupt or foreign files are misses (and removed).

        :param key: what to look up.
        :returns: the entry (body as :class:`FileBody`), or ``None``.
        """
        if self._closed:
            return succeed(None)
        if self._scan is None:
            self.start()
        counters = self._counters(key.bucket)
        try:
            digest = key.digest
            found = self._lookup(key, digest, entry_path(self.root, digest))
        except Exception as exc:  # e.g. a key text UTF-8 cannot encode: a miss, never a raise
            self._error("get", exc, key)
            found = None
        if found is None:
            self._total.misses += 1
            counters.misses += 1
            return succeed(None)
        self._total.hits += 1
        counters.hits += 1
        return succeed(found)

    def _lookup(self, key: CacheKey, digest: str, path: str) -> CacheEntry | None:
        try:
            meta, inode, size = read_meta(path)
        except FileNotFoundError:
            if self._scanned:
                self._forget(digest)
            return None
        except CorruptEntry as exc:
            log.info("disk cache: removing corrupt entry {path}: {reason}", path=path, reason=exc)
            self._drop(digest, path, exc.inode, key)
            return None
        except OSError as exc:
            self._error("get", exc, key)
            return None
        if meta.key != key:
            log.warn(
                "disk cache: {path} holds {other}, not {cache_key}; removing it",
                path=path,
                other=meta.key.text,
                cache_key=key.text,
            )
            self._drop(digest, path, inode, key)
            return None
        if meta.retain_until <= self._reactor.seconds():
            self._drop(digest, path, inode, key)
            return None
        if self._scanned:
            record = self._index.get(digest)
            if record is None or record.size != size or record.retain_until != meta.retain_until:
                self._remember(digest, _Record(key, size, meta.retain_until))
                self._evict_if_needed()
            else:
                self._index.move_to_end(digest)
        return CacheEntry(
            headers=meta.headers,
            body=FileBody(path, PRELUDE_SIZE, meta.body_length),
            stored_at=meta.stored_at,
            expires_at=meta.expires_at,
            retain_until=meta.retain_until,
            revalidate=meta.revalidate,
        )

    def _drop(self, digest: str, path: str, inode: int | None, key: CacheKey) -> None:
        if self._scanned:
            self._forget(digest)
        self._background("remove", key, _remove_if_same, path, inode)

    def set(self, key: CacheKey, entry: CacheEntry) -> Deferred[None]:
        """
        Store an entry (in the thread pool). Declined, and any older entry for the key
        removed, when the body is over ``max_item_size`` or the entry is past
        ``retain_until``. Never fails.

        :param key: the key.
        :param entry: the entry (``bytes`` body, or a :class:`FileBody` to copy).
        :returns: fires when stored (or declined, or failed: see :attr:`errors`).
        """
        if self._closed:
            return succeed(None)
        return self._run(self._set(key, entry), op="set", key=key, default=None)

    async def _set(self, key: CacheKey, entry: CacheEntry) -> None:
        digest = key.digest
        declined = (
            entry.length > self.max_item_size
            or entry.size > self.max_size
            or entry.retain_until <= self._reactor.seconds()
        )
        ticket = self._ticket(key, digest)
        ticket.retain_until = entry.retain_until
        try:
            await self.start()
            if self._closed:
                return
            if declined:
                self._release(digest, ticket)
                await self._delete(key)
                return
            trailer = encode_trailer(key, entry, entry.length)

            async def job() -> None:
                if ticket.cancelled:
                    self._release(digest, ticket)
                    return
                size = await self.in_thread(
                    _write_entry, self.root, digest, entry.body, trailer, lambda: ticket.cancelled
                )
                await self._committed(digest, ticket, size)

            await self._serialized(digest, job)
        finally:
            self._release(digest, ticket)

    def open_writer(self, key: CacheKey) -> ICacheWriter | None:
        """
        :param key: the key.
        :returns: a :class:`DiskCacheWriter` (``None`` once closed).
        """
        if self._closed:
            return None
        if self._scan is None:
            self.start()
        try:
            writer = DiskCacheWriter(self, key)
        except Exception as exc:  # e.g. a key text UTF-8 cannot encode
            self._error("open_writer", exc, key)
            return None
        self._writers.add(writer)
        return writer

    def services(self) -> list[IService]:
        """
        :returns: a service whose start begins the scan and whose stop closes the layer
            (optional: without it the scan starts on first use).
        """
        return [_LayerService(self)]

    def delete(self, key: CacheKey) -> Deferred[bool]:
        """
        :param key: the key.
        :returns: whether a file was there (and removed). Cancels writes in flight for it.
        """
        if self._closed:
            return succeed(False)
        return self._run(self._delete(key), op="delete", key=key, default=False)

    async def _delete(self, key: CacheKey) -> bool:
        digest = key.digest
        self._cancel(lambda k: k == key)
        await self.start()
        self._forget(digest)
        removed = await self.in_thread(_unlink_all, [entry_path(self.root, digest)], True)
        return removed > 0

    def purge(self, bucket: str | None, prefix: str | None) -> Deferred[int]:
        """
        Remove matching entries: those in the index and any file on disk matching (written by
        another process), by a sweep of the directory in the thread pool.

        :param bucket: a bucket name, or ``None`` for everything.
        :param prefix: with a bucket, only keys starting with it.
        :returns: how many entry files were removed.
        """
        if self._closed:
            return succeed(0)
        return self._run(self._purge(bucket, prefix), op="purge", key=None, default=0)

    async def _purge(self, bucket: str | None, prefix: str | None) -> int:
        self._cancel(lambda k: _matches(k, bucket, prefix))
        await self.start()
        for digest in [d for d, r in self._index.items() if _matches(r.key, bucket, prefix)]:
            self._forget(digest)
        removed, corrupt = await self.in_thread(sweep, self.root, bucket, prefix)
        for digest in removed:
            self._forget(digest)
        if corrupt:
            log.info("disk cache: purge removed {count} corrupt files", count=corrupt)
        return len(removed)

    def stats(self, bucket: str | None) -> LayerStats:
        """
        :param bucket: a bucket name, or ``None`` for the layer.
        :returns: the counters (``max_size_bytes`` is the layer's bound; 0 for a bucket).
        """
        if bucket is None:
            counters, max_size = self._total, self.max_size
        else:
            counters, max_size = self._buckets.get(bucket, _Counters()), 0
        return LayerStats(
            hits=counters.hits,
            misses=counters.misses,
            evictions=counters.evictions,
            current_size_bytes=counters.bytes,
            current_item_count=counters.items,
            max_size_bytes=max_size,
        )

    def close(self) -> Deferred[None]:
        """
        Stop accepting work, abort open writers and wait for work in the thread pool.

        :returns: fires when nothing of this layer runs any more.
        """
        self._closed = True
        for writer in list(self._writers):
            writer.abort()
        return self._run(self.idle(), op="close", key=None, default=None)

    async def idle(self) -> None:
        """Wait until no thread-pool work of this layer is pending (tests, shutdown)."""
        while self._inflight:
            waiters: list[Deferred[None]] = []
            for d in self._inflight:
                waiter: Deferred[None] = Deferred()
                d.addBoth(_fire_and_pass, waiter)  # leaves d's result alone
                waiters.append(waiter)
            await DeferredList(waiters)


class _LayerService(Service):
    def __init__(self, layer: DiskCacheLayer) -> None:
        self.layer = layer
        self.name = f"cache-{layer.name}"

    def startService(self) -> None:
        super().startService()
        self.layer.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.layer.close()


# --------------------------------------------------------------------------------------------
# Streaming writer


@implementer(ICacheWriter)
class DiskCacheWriter:
    """
    Streams a body to a temp file while it is served.

    ``write`` only appends to an in-memory list; once :attr:`FLUSH_AT` bytes are pending they
    are written in the thread pool, one flush at a time (the next batch accumulates
    meanwhile). When the disk falls behind by more than :attr:`MAX_BACKLOG` bytes the write is
    given up (memory stays bounded; serving is never slowed down). A body growing past the
    layer's ``max_item_size`` is given up too. ``commit`` flushes the rest, appends the
    metadata, fsyncs and renames; it fails with :class:`DiskCacheError` when the write was
    given up or an I/O error happened (counted in the layer's ``errors``), and succeeds
    without storing anything when a delete/purge covered the key meanwhile.
    """

    FLUSH_AT = 256 * 1024
    MAX_BACKLOG = 8 * MIB

    def __init__(self, layer: DiskCacheLayer, key: CacheKey) -> None:
        self._layer = layer
        self._key = key
        self._digest = key.digest
        self._ticket = layer._ticket(key, self._digest)
        self._directory = os.path.dirname(entry_path(layer.root, self._digest))
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._length = 0
        self._temp: _TempFile | None = None
        self._busy: Deferred[None] | None = None
        self._problem: str | None = None
        self._finished = False

    def write(self, data: bytes) -> None:
        """
        :param data: the next body bytes (kept, then written off the reactor thread).
        """
        if self._finished or self._problem is not None:
            return
        if self._ticket.cancelled:
            self._give_up("deleted or purged while being written")
            return
        self._length += len(data)
        if self._length > self._layer.max_item_size:
            self._give_up(f"body larger than max_item_size ({self._layer.max_item_size} bytes)")
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self.MAX_BACKLOG:
            self._give_up(f"disk too slow: {self._pending_bytes} bytes waiting")
            return
        if self._pending_bytes >= self.FLUSH_AT and self._busy is None:
            self._flush()

    def _give_up(self, problem: str) -> None:
        self._problem = problem
        self._pending, self._pending_bytes = [], 0

    def _flush(self) -> None:
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        busy = self._layer.in_thread(self._write_chunks, chunks)
        self._busy = busy

        def done(result: Failure | None) -> None:
            self._busy = None
            if isinstance(result, Failure):
                self._layer._error("write", result, self._key)
                self._give_up(f"{type(result.value).__name__}: {result.value}")
                return
            if (
                not self._finished
                and self._problem is None
                and self._pending_bytes >= self.FLUSH_AT
            ):
                self._flush()

        busy.addBoth(done)

    def _write_chunks(self, chunks: list[bytes]) -> None:
        # In the thread pool; never concurrently with another job of this writer.
        if self._temp is None:
            self._temp = _TempFile(self._directory)
        self._temp.write(chunks)

    def _discard(self) -> None:
        if self._temp is not None:
            self._temp.discard()

    async def _idle(self) -> None:
        while self._busy is not None:
            waiter: Deferred[None] = Deferred()
            self._busy.addBoth(_fire, waiter)
            await waiter

    def commit(self, entry: CacheEntry) -> Deferred[None]:
        """
        :param entry: headers and freshness (``body`` ignored).
        :returns: fires once committed; fails with :class:`DiskCacheError` otherwise.
        """
        if self._finished:
            return succeed(None) if self._ticket.cancelled else _failed("writer already done")
        self._finished = True
        return Deferred.fromCoroutine(self._commit(entry))

    async def _commit(self, entry: CacheEntry) -> None:
        layer = self._layer
        try:
            await self._idle()
            if self._ticket.cancelled or layer._closed:
                await layer.in_thread(self._discard)
                return
            if self._problem is None and entry.retain_until <= layer._reactor.seconds():
                self._problem = "entry already past retain_until"
            if self._problem is not None:
                await layer.in_thread(self._discard)
                raise DiskCacheError(f"not stored in the disk cache: {self._problem}")
            chunks, self._pending, self._pending_bytes = self._pending, [], 0
            trailer = encode_trailer(self._key, entry, self._length)
            ticket = self._ticket
            ticket.retain_until = entry.retain_until
            final = entry_path(layer.root, self._digest)

            def finish() -> int | None:
                self._write_chunks(chunks)
                assert self._temp is not None
                return self._temp.finish(trailer, final, lambda: ticket.cancelled)

            async def job() -> None:
                try:
                    size = await layer.in_thread(finish)
                except Exception as exc:
                    await layer.in_thread(self._discard)
                    layer._error("write", exc, self._key)
                    raise DiskCacheError(f"not stored in the disk cache: {exc}") from exc
                await layer._committed(self._digest, ticket, size)

            await layer.start()
            await layer._serialized(self._digest, job)
        finally:
            layer._release(self._digest, self._ticket)
            layer._writers.discard(self)

    def abort(self) -> None:
        """Throw away what was written (in the thread pool, after any flush in progress)."""
        if self._finished:
            return
        self._finished = True
        self._give_up("aborted")
        self._layer._release(self._digest, self._ticket)
        self._layer._writers.discard(self)

        async def cleanup() -> None:
            await self._idle()
            await self._layer.in_thread(self._discard)

        self._layer._run(cleanup(), op="abort", key=self._key, default=None)


def _fire(_: object, waiter: Deferred[None]) -> None:
    waiter.callback(None)


def _fire_and_pass(result: T, waiter: Deferred[None]) -> T:
    waiter.callback(None)
    return result


def _failed(message: str) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(DiskCacheError(message))
    return d

"""
The disk cache layer on the real reactor and its thread pool: the layer contract, plus the
file layout, restart, cleanup, bound, streaming, errors.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from yatagarasu.cache.disk import DiskCacheFactory
from yatagarasu.cache.disk.format import (
    FOOTER_SIZE,
    PRELUDE,
    PRELUDE_SIZE,
    encode_trailer,
    entry_path,
)
from yatagarasu.cache.disk.layer import INLINE_BODY, DiskCacheLayer
from yatagarasu.cache.disk.writer import DiskCacheError, DiskCacheWriter
from yatagarasu.interfaces import ICacheWriter
from yatagarasu.testing import FAR_FUTURE, CacheLayerContract, body_of
from yatagarasu.testing import sample_entry as entry
from yatagarasu.values import CacheKey, FileBody

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def make_layer(reactor: Any) -> Iterator[Callable[..., DiskCacheLayer]]:
    """``make_layer(cache_dir, **settings)`` → a layer closed at teardown."""
    made: list[DiskCacheLayer] = []

    def make(cache_dir: Path | str, **settings: Any) -> DiskCacheLayer:
        built = DiskCacheFactory().build(
            {"enabled": True, "cache_dir": str(cache_dir), **settings}, "cache.disk", reactor
        )
        assert isinstance(built, DiskCacheLayer)
        made.append(built)
        return built

    yield make
    for layer in made:
        pytest_twisted.blockon(layer.close())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


class TestDiskContract(CacheLayerContract):
    @pytest.fixture(autouse=True)
    def _layer(self, make_layer: Callable[..., DiskCacheLayer], tmp_path: Path) -> None:
        self.layer = make_layer(tmp_path / "cache", max_disk_cache_size_mb=4, max_item_size_mb=1)


# --- format --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_file_layout_and_format(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    key = CacheKey("b", "a/b.txt")
    body = b"0123456789" * 100
    await layer.set(key, entry(body))
    digest = key.digest
    path = root / digest[:2] / digest[2:4] / digest
    assert [path] == files_under(root)
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    raw = path.read_bytes()
    assert raw.startswith(PRELUDE)
    assert raw[PRELUDE_SIZE : PRELUDE_SIZE + len(body)] == body
    assert raw[-4:] == b"YTGE"
    assert b'"key":"a/b.txt"' in raw
    assert path.stat().st_size == layer.stats(None).current_size_bytes
    found = await layer.get(key)
    assert found is not None
    assert found.body == body  # small: read with the entry (INLINE_BODY)


@pytest_twisted.ensureDeferred
async def test_bodies_up_to_the_inline_limit_are_read_larger_ones_streamed(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    small, large = CacheKey("b", "small"), CacheKey("b", "large")
    await layer.set(small, entry(b"s" * INLINE_BODY))
    await layer.set(large, entry(b"l" * (INLINE_BODY + 1)))
    for _ in range(2):  # the first lookup reads the metadata, the second uses what it kept
        got_small, got_large = layer.lookup(small), layer.lookup(large)
        assert got_small is not None and got_small.body == b"s" * INLINE_BODY
        digest = large.digest
        path = root / digest[:2] / digest[2:4] / digest
        assert got_large is not None
        assert got_large.body == FileBody(str(path), PRELUDE_SIZE, INLINE_BODY + 1)
        assert await body_of(got_large) == b"l" * (INLINE_BODY + 1)
    assert layer.stats(None).hits == 4


@pytest_twisted.ensureDeferred
async def test_a_hot_entry_whose_file_changed_is_read_again(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    """Another process replaced the file (new inode) or cut it short: never the old metadata."""
    root = tmp_path / "cache"
    layer = make_layer(root)
    key = CacheKey("b", "changing")
    await layer.set(key, entry(b"old body", etag=b'"old"'))
    first = layer.lookup(key)
    assert first is not None and first.header(b"etag") == b'"old"'
    other = make_layer(root)  # a second process sharing the directory
    await other.set(key, entry(b"a newer, longer body", etag=b'"new"'))
    second = layer.lookup(key)
    assert second is not None
    assert (second.header(b"etag"), second.body) == (b'"new"', b"a newer, longer body")
    digest = key.digest
    path = root / digest[:2] / digest[2:4] / digest
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)
    assert layer.lookup(key) is None
    await layer.idle()
    assert not path.exists()  # removed as corrupt


@pytest_twisted.ensureDeferred
async def test_large_headers_and_non_ascii_header_bytes_roundtrip(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "k")
    headers = (
        (b"content-type", b"text/plain"),
        (b"content-disposition", b"attachment; filename=\xe9t\xe9.txt"),
        (b"x-long", b"v" * 20_000),
    )
    stored = entry(b"x" * 20_000, headers=headers)
    await layer.set(key, stored)
    found = await layer.get(key)
    assert found is not None
    assert found.headers == headers
    assert await body_of(found) == b"x" * 20_000


@pytest_twisted.ensureDeferred
async def test_set_with_a_file_body_copies_it(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"HEADER" + b"payload" * 1000 + b"TRAILER")
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "copied")
    await layer.set(key, dataclasses.replace(entry(), body=FileBody(str(source), 6, 7000)))
    found = await layer.get(key)
    assert found is not None and await body_of(found) == b"payload" * 1000


@pytest_twisted.ensureDeferred
async def test_refreshing_an_entry_with_its_own_file_body(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    """After a 304, the tiered cache stores the entry it got from this layer with new times."""
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "revalidated")
    body = os.urandom(300_000)
    await layer.set(key, entry(body, expires_at=10.0))
    found = await layer.get(key)
    assert found is not None
    await layer.set(key, dataclasses.replace(found, stored_at=2e9, expires_at=3e9))
    refreshed = await layer.get(key)
    assert refreshed is not None
    assert refreshed.expires_at == 3e9 and refreshed.stored_at == 2e9
    assert await body_of(refreshed) == body
    assert layer.stats(None).current_item_count == 1
    assert layer.errors == 0


@pytest_twisted.ensureDeferred
async def test_keys_utf8_cannot_encode_are_misses_not_exceptions(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "bad\udcff")
    await layer.set(key, entry())
    assert await layer.get(key) is None
    assert await layer.delete(key) is False
    assert layer.open_writer(key) is None
    assert layer.errors == 4


@pytest_twisted.ensureDeferred
async def test_service_starts_the_scan_and_closes_the_layer(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    write_raw_entry(root, CacheKey("b", "k"), b"body")
    layer = make_layer(root)
    (service,) = layer.services()
    service.startService()
    await layer.start()
    assert layer.stats(None).current_item_count == 1
    await service.stopService()
    assert layer.open_writer(CacheKey("b", "x")) is None


# --- restart and cleanup ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restart_finds_previous_entries(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    first = make_layer(root)
    for i in range(5):
        await first.set(CacheKey("a" if i % 2 else "b", f"k{i}"), entry(f"body {i}".encode()))
    await first.close()

    second = make_layer(root)
    await second.start()
    assert second.stats(None).current_item_count == 5
    assert second.stats("a").current_item_count == 2
    assert second.stats(None).current_size_bytes == sum(p.stat().st_size for p in files_under(root))
    found = await second.get(CacheKey("b", "k4"))
    assert found is not None and await body_of(found) == b"body 4"
    assert await second.purge("a", None) == 2
    assert second.stats(None).current_item_count == 3


def write_raw_entry(root: Path, key: CacheKey, body: bytes, **overrides: Any) -> Path:
    path = Path(entry_path(str(root), key.digest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PRELUDE + body + encode_trailer(key, entry(body, **overrides), len(body)))
    return path


@pytest_twisted.ensureDeferred
async def test_scan_removes_corrupt_truncated_expired_stray_and_temp_files(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    good = write_raw_entry(root, CacheKey("b", "good"), b"good body")
    truncated = write_raw_entry(root, CacheKey("b", "truncated"), b"t" * 5000)
    with truncated.open("r+b") as f:
        f.truncate(3000)
    flipped = write_raw_entry(root, CacheKey("b", "flipped"), b"f" * 100)
    raw = bytearray(flipped.read_bytes())
    raw[-FOOTER_SIZE - 10] ^= 0xFF  # inside the header: CRC mismatch
    flipped.write_bytes(bytes(raw))
    empty = write_raw_entry(root, CacheKey("b", "empty"), b"")
    empty.write_bytes(b"")
    garbage = write_raw_entry(root, CacheKey("b", "garbage"), b"g")
    garbage.write_bytes(b"not an entry at all, just some bytes" * 3)
    write_raw_entry(root, CacheKey("b", "expired"), b"old", retain_until=1000.0)
    # a valid entry under the wrong name (as if a collision or a misplaced file)
    moved = Path(entry_path(str(root), CacheKey("b", "other").digest))
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_bytes(good.read_bytes())
    orphan_temp = good.parent / ".tmp-deadbeef"
    orphan_temp.write_bytes(PRELUDE + b"half written")
    stray = good.parent / "stray.txt"
    stray.write_text("stray")
    outside = root / "README"
    outside.write_text("not ours: left alone")

    layer = make_layer(root)
    await layer.start()
    assert files_under(root) == sorted([good, outside])
    assert layer.stats(None).current_item_count == 1
    for name in ("truncated", "flipped", "empty", "garbage", "expired", "other"):
        assert await layer.get(CacheKey("b", name)) is None
    found = await layer.get(CacheKey("b", "good"))
    assert found is not None and await body_of(found) == b"good body"
    assert layer.errors == 0


@pytest_twisted.ensureDeferred
async def test_scan_keeps_temp_files_a_live_writer_holds(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    (root / "ab" / "cd").mkdir(parents=True)
    live = root / "ab" / "cd" / ".tmp-live"
    with live.open("wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        layer = make_layer(root)
        await layer.start()
        assert live.exists()
    other = make_layer(root)
    await other.start()
    assert not live.exists()


@pytest_twisted.ensureDeferred
async def test_corrupt_file_found_by_get_is_a_miss_and_removed(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    key = CacheKey("b", "k")
    await layer.set(key, entry(b"x" * 1000))
    path = Path(entry_path(str(root), key.digest))
    with path.open("r+b") as f:
        f.truncate(500)
    assert await layer.get(key) is None
    await layer.idle()
    assert not path.exists()
    assert layer.stats(None).current_item_count == 0


# --- several processes -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_entries_written_or_deleted_by_another_process(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    a = make_layer(root)
    b = make_layer(root)
    await a.start()
    await b.start()
    key = CacheKey("b", "shared")
    await a.set(key, entry(b"from a"))
    found = await b.get(key)  # not in b's index: found by its name
    assert found is not None and await body_of(found) == b"from a"
    assert b.stats(None).current_item_count == 1
    assert await a.delete(key) is True
    assert await b.get(key) is None
    assert b.stats(None).current_item_count == 0
    # a purge also removes files this process never saw
    await a.set(CacheKey("p", "x/1"), entry())
    await a.set(CacheKey("p", "y/1"), entry())
    assert await b.purge("p", "x/") == 1
    assert await a.get(CacheKey("p", "x/1")) is None
    assert await a.get(CacheKey("p", "y/1")) is not None
    assert await b.purge(None, None) == 1


@pytest_twisted.ensureDeferred
async def test_delete_cancels_a_write_in_flight(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "racy")
    storing = layer.set(key, entry(b"x" * 100_000))
    await layer.delete(key)
    await storing
    await layer.idle()
    assert await layer.get(key) is None
    assert layer.stats(None).current_item_count == 0
    assert files_under(tmp_path / "cache") == []


# --- size bound ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_size_bound_evicts_least_recently_used(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root, max_disk_cache_size_mb=0.1, max_item_size_mb=0.05)  # 104857 bytes
    body = b"z" * 20_000
    for i in range(4):
        await layer.set(CacheKey("b", f"k{i}"), entry(body))
    assert await layer.get(CacheKey("b", "k0")) is not None  # k0 is now the most recent
    for i in range(4, 8):
        await layer.set(CacheKey("b", f"k{i}"), entry(body))
    await layer.idle()
    total = layer.stats(None)
    assert total.current_size_bytes <= layer.max_size
    assert total.evictions == layer.evictions == 8 - total.current_item_count
    assert layer.stats("b").evictions == total.evictions
    assert total.max_size_bytes == layer.max_size
    assert await layer.get(CacheKey("b", "k0")) is not None
    assert await layer.get(CacheKey("b", "k1")) is None
    assert await layer.get(CacheKey("b", "k7")) is not None
    on_disk = files_under(root)
    assert len(on_disk) == total.current_item_count
    assert sum(p.stat().st_size for p in on_disk) == total.current_size_bytes


@pytest_twisted.ensureDeferred
async def test_scan_evicts_when_the_directory_is_over_the_bound(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    big = make_layer(root)
    for i in range(6):
        await big.set(CacheKey("b", f"k{i}"), entry(b"q" * 30_000))
    await big.close()
    small = make_layer(root, max_disk_cache_size_mb=0.1)
    await small.start()
    await small.idle()
    assert small.stats(None).current_size_bytes <= small.max_size
    assert small.evictions > 0
    assert len(files_under(root)) == small.stats(None).current_item_count


# --- streaming writer ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_streaming_writer_commit(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root, max_item_size_mb=8)
    key = CacheKey("b", "big.bin")
    writer = layer.open_writer(key)
    assert writer is not None and verifyObject(ICacheWriter, writer)
    body = os.urandom(3 * MIB + 123)
    for start in range(0, len(body), 64 * 1024):
        writer.write(body[start : start + 64 * 1024])
    assert await layer.get(key) is None  # not visible before commit
    await writer.commit(entry(b"ignored", etag=b'"big"'))
    found = await layer.get(key)
    assert found is not None
    assert found.length == len(body)
    assert found.header(b"etag") == b'"big"'
    assert await body_of(found) == body
    assert [p.name for p in files_under(root)] == [key.digest]
    assert layer.stats("b").current_item_count == 1


@pytest_twisted.ensureDeferred
async def test_streaming_writer_abort_leaves_nothing(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    key = CacheKey("b", "aborted")
    writer = layer.open_writer(key)
    assert writer is not None
    for _ in range(20):
        writer.write(b"a" * 100_000)
    writer.abort()
    await layer.idle()
    assert await layer.get(key) is None
    assert files_under(root) == []


@pytest_twisted.ensureDeferred
async def test_streaming_writer_over_the_item_cap_fails_commit(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root, max_item_size_mb=1)
    key = CacheKey("b", "too-big")
    writer = layer.open_writer(key)
    assert writer is not None
    for _ in range(11):
        writer.write(b"b" * 100_000)
    with pytest.raises(DiskCacheError, match="max_item_size"):
        await writer.commit(entry())
    await layer.idle()
    assert await layer.get(key) is None
    assert files_under(root) == []


@pytest_twisted.ensureDeferred
async def test_streaming_writer_gives_up_when_the_disk_falls_behind(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DiskCacheWriter, "MAX_BACKLOG", 1000)
    monkeypatch.setattr(DiskCacheWriter, "FLUSH_AT", 10**9)
    layer = make_layer(tmp_path / "cache")
    writer = layer.open_writer(CacheKey("b", "slow"))
    assert writer is not None
    writer.write(b"c" * 2000)
    with pytest.raises(DiskCacheError, match="too slow"):
        await writer.commit(entry())


@pytest_twisted.ensureDeferred
async def test_purge_during_a_streamed_write_drops_it(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    key = CacheKey("b", "purged/while/writing")
    writer = layer.open_writer(key)
    assert writer is not None
    writer.write(b"d" * 300_000)
    assert await layer.purge("b", "purged/") == 0
    writer.write(b"d" * 300_000)
    await writer.commit(entry())  # not an error: it was purged
    await layer.idle()
    assert await layer.get(key) is None
    assert files_under(root) == []


@pytest_twisted.ensureDeferred
async def test_close_aborts_open_writers(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    writer = layer.open_writer(CacheKey("b", "open"))
    assert writer is not None
    writer.write(b"e" * 400_000)
    await layer.close()
    assert files_under(root) == []
    assert layer.open_writer(CacheKey("b", "later")) is None
    assert await layer.get(CacheKey("b", "open")) is None


# --- failures never reach the caller ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unusable_directory_makes_set_a_noop_and_get_a_miss(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)  # configured while the directory could still be made...
    root.write_text("a regular file where the cache directory should be")  # ...then not
    key = CacheKey("b", "k")
    await layer.start()
    await layer.set(key, entry())  # fires, never fails
    assert await layer.get(key) is None
    assert await layer.delete(key) is False
    assert await layer.purge("b", None) == 0
    writer = layer.open_writer(key)
    assert writer is not None
    writer.write(b"f" * 1000)
    with pytest.raises(DiskCacheError):
        await writer.commit(entry())
    assert layer.errors >= 3
    stats = layer.stats(None)
    assert stats.current_item_count == 0 and stats.misses == 1


@pytest_twisted.ensureDeferred
async def test_disk_full_on_write_is_counted_and_leaves_no_temp_file(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    kept = CacheKey("b", "kept")
    await layer.set(kept, entry(b"kept"))

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    key = CacheKey("b", "new")
    await layer.set(key, entry(b"n" * 10_000))  # fires, never fails
    writer = layer.open_writer(CacheKey("b", "streamed"))
    assert writer is not None
    writer.write(b"s" * 10_000)
    with pytest.raises(DiskCacheError, match="No space"):
        await writer.commit(entry())
    monkeypatch.undo()
    assert layer.errors == 2
    assert await layer.get(key) is None
    found = await layer.get(kept)
    assert found is not None and await body_of(found) == b"kept"
    assert [p.name for p in files_under(root)] == [kept.digest]
    assert layer.stats(None).current_item_count == 1


@pytest_twisted.ensureDeferred
async def test_io_error_in_a_streamed_flush_is_counted_and_fails_commit(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    real_open = os.open

    def eio_for_temp_files(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(str(path)).startswith(".tmp-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", eio_for_temp_files)
    writer = layer.open_writer(CacheKey("b", "flush-fails"))
    assert writer is not None
    for _ in range(10):
        writer.write(b"w" * 100_000)  # crosses FLUSH_AT: the first flush fails
    with pytest.raises(DiskCacheError, match="Input/output error"):
        await writer.commit(entry())
    monkeypatch.undo()
    assert layer.errors == 1
    assert files_under(root) == []


@pytest_twisted.ensureDeferred
async def test_io_error_on_get_is_a_counted_miss(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "k")
    await layer.set(key, entry())

    def eio(*args: Any) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", eio)
    assert await layer.get(key) is None
    monkeypatch.undo()
    assert layer.errors == 1
    assert await layer.get(key) is not None  # the entry was kept: the error may be transient


@pytest_twisted.ensureDeferred
async def test_permission_denied_on_get_is_a_counted_miss(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_layer(tmp_path / "cache")
    key = CacheKey("b", "k")
    await layer.set(key, entry())
    real_open = os.open

    def denied(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(key.digest):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    assert await layer.get(key) is None
    monkeypatch.undo()
    assert layer.errors == 1


# --- retention -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_declined_set_removes_the_older_entry(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path
) -> None:
    layer = make_layer(tmp_path / "cache", max_item_size_mb=0.1)
    key = CacheKey("b", "k")
    await layer.set(key, entry(b"small"))
    await layer.set(key, entry(b"L" * 200_000))
    assert await layer.get(key) is None
    assert layer.stats(None).current_item_count == 0


@pytest_twisted.ensureDeferred
async def test_entry_whose_retention_passes_on_disk_is_dropped_by_get(
    make_layer: Callable[..., DiskCacheLayer], tmp_path: Path, reactor: Any
) -> None:
    root = tmp_path / "cache"
    layer = make_layer(root)
    await layer.start()
    key = CacheKey("b", "soon")
    write_raw_entry(root, key, b"x", retain_until=reactor.seconds() - 1)
    assert await layer.get(key) is None
    await layer.idle()
    assert files_under(root) == []
    # and an entry retained far ahead but expired stays available (stale-if-error)
    stale = CacheKey("b", "stale")
    write_raw_entry(root, stale, b"y", expires_at=1.0, retain_until=FAR_FUTURE)
    found = await layer.get(stale)
    assert found is not None and not found.is_fresh(reactor.seconds())

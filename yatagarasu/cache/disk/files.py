"""
The disk layer's blocking file operations: reading an entry's metadata, writing an entry
through a temp file, removing files. Safe in any thread; they touch no layer state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable, Iterable
from typing import BinaryIO, NamedTuple

from yatagarasu.cache.disk.format import (
    PRELUDE,
    PRELUDE_SIZE,
    TEMP_PREFIX,
    CorruptEntry,
    EntryMeta,
    check_size,
    decode_footer,
    decode_trailer,
    entry_path,
)
from yatagarasu.values import MIB, FileBody

_TAIL_READ = 8192
_COPY_CHUNK = MIB


def read_meta_fd(fd: int, size: int) -> EntryMeta:
    """
    Read and check an entry's metadata (blocking, bounded: at most ~8 KiB for usual headers).

    :param fd: the open file.
    :param size: its size.
    :returns: the metadata.
    :raises CorruptEntry: when the file is not a complete, valid entry.
    :raises OSError: on I/O errors.
    """
    check_size(size)
    if size <= _TAIL_READ:
        whole = os.pread(fd, size, 0)
        prelude, tail = whole[:PRELUDE_SIZE], whole[PRELUDE_SIZE:]
    else:
        prelude = os.pread(fd, PRELUDE_SIZE, 0)
        tail = os.pread(fd, _TAIL_READ, size - _TAIL_READ)
    footer = decode_footer(prelude, tail, size)
    if footer.trailer_length > len(tail):
        tail = os.pread(fd, footer.trailer_length, size - footer.trailer_length)
        if len(tail) != footer.trailer_length:
            raise CorruptEntry("truncated")
    return decode_trailer(tail, footer)


class Stamp(NamedTuple):
    """What tells one entry file from another at the same path (renames make new inodes)."""

    inode: int
    size: int
    mtime_ns: int


class EntryRead(NamedTuple):
    """What :func:`read_entry` found in an entry file."""

    #: the file read
    stamp: Stamp
    #: its metadata, or ``None`` when the file is the one the caller already knew
    meta: EntryMeta | None
    #: the body, when it was read (its length was at most the inline limit), else ``None``
    body: bytes | None


def read_entry(path: str, known: Stamp | None, known_length: int, inline_limit: int) -> EntryRead:
    """
    Read an entry file for a hit (blocking, bounded: ``open``, ``fstat``, the metadata only
    when the file is not ``known``, one ``pread`` of a body up to ``inline_limit`` bytes,
    ``close``).

    :param path: the entry file.
    :param known: the stamp of the file whose metadata the caller holds, or ``None``.
    :param known_length: that file's body length (used when the stamp matches).
    :param inline_limit: bodies up to this length are read.
    :returns: the stamp, the metadata (unless ``known`` matched) and the body (if read).
    :raises FileNotFoundError: when there is no such file.
    :raises CorruptEntry: when it is not a valid entry, or is shorter than its body.
    :raises OSError: on other I/O errors.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        stamp = Stamp(st.st_ino, st.st_size, st.st_mtime_ns)
        meta: EntryMeta | None = None
        length = known_length
        try:
            if stamp != known:
                meta = read_meta_fd(fd, st.st_size)
                length = meta.body_length
            body = None
            if length <= inline_limit:
                body = os.pread(fd, length, PRELUDE_SIZE)
                if len(body) != length:
                    raise CorruptEntry("truncated")
        except CorruptEntry as exc:
            exc.inode = st.st_ino
            raise
        return EntryRead(stamp, meta, body)
    finally:
        os.close(fd)


def read_named_entry(name: str, path: str) -> tuple[EntryMeta, int, os.stat_result]:
    """
    :param name: the file's name (the digest of the key it should hold).
    :param path: the file.
    :returns: its metadata, inode number and status.
    :raises FileNotFoundError: when there is no such file.
    :raises CorruptEntry: when it is not a valid entry, or holds a key of another digest.
    :raises OSError: on other I/O errors.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        meta = read_meta_fd(fd, st.st_size)
    finally:
        os.close(fd)
    if meta.key.digest != name:
        raise CorruptEntry("the key in the header does not hash to the file name")
    return meta, st.st_ino, st


def fsync_dir(path: str) -> None:
    """``fsync`` a directory (errors ignored: it only makes a crash lose less)."""
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
    fsync_dir(parent)
    fsync_dir(os.path.dirname(parent))


class TempFile:
    """A temp file being written in an entry's directory (blocking; one thread at a time)."""

    def __init__(self, directory: str) -> None:
        """
        Create and lock the file, and write the prelude.

        :param directory: the entry's directory (created when missing).
        :raises OSError: on I/O errors (nothing is left behind).
        """
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
        """:param chunks: bytes to append."""
        for chunk in chunks:
            self.file.write(chunk)
            self.size += len(chunk)

    def copy_from(self, body: FileBody) -> None:
        """
        :param body: a body in another file, appended without reading it whole.
        :raises CorruptEntry: when that file is shorter than the body.
        """
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
        """Close and remove the file (errors ignored)."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def write_entry(
    root: str,
    digest: str,
    body: bytes | FileBody,
    trailer: bytes,
    cancelled: Callable[[], bool],
) -> int | None:
    """
    :param root: the cache directory.
    :param digest: the key's digest (names the file).
    :param body: the body, or a file to copy it from.
    :param trailer: from :func:`~yatagarasu.cache.disk.format.encode_trailer`.
    :param cancelled: asked before the rename; true leaves nothing behind.
    :returns: the entry file's size, or ``None`` when cancelled.
    :raises OSError: on I/O errors (no temp file is left behind).
    """
    final = entry_path(root, digest)
    temp = TempFile(os.path.dirname(final))
    try:
        if isinstance(body, FileBody):
            temp.copy_from(body)
        else:
            temp.write([body])
    except BaseException:
        temp.discard()
        raise
    return temp.finish(trailer, final, cancelled)


def remove_if_same(path: str, inode: int | None) -> bool:
    """Unlink ``path`` if it is still the file ``inode`` (``None``: whatever it is)."""
    try:
        if inode is not None and os.stat(path).st_ino != inode:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def unlink_all(paths: Iterable[str], sync: bool) -> int:
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
            fsync_dir(directory)
    return removed


def remove_orphan_temp(path: str) -> bool:
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

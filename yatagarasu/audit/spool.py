"""
The local spool of the ``s3`` audit sink: one file per batch, named as its S3 object, kept
until S3 has stored it.

A batch is written to a hidden temporary name in the spool directory and renamed to its final
name (``os.replace``, atomic within one directory; no fsync: a power cut may lose the last
batch, a process crash does not). A leftover temporary file is a batch whose write was cut off:
it is removed when the spool is scanned. Every method here blocks (file system calls) and runs
in a thread; the sink keeps the index of spooled batches on the reactor thread.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: every spooled batch's name starts with this (the S3 object's name without the prefix)
BATCH_PREFIX = "yatagarasu-audit-"

#: how a batch being written is named (``.tmp-<name>``); never uploaded
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class SpooledBatch:
    """
    One batch waiting in the spool.

    :ivar name: its file name, also the S3 object's name after ``path_prefix``.
    :ivar size: its size in bytes on disk.
    :ivar records: how many records (lines) it holds.
    """

    name: str
    size: int
    records: int


def count_lines(name: str, data: bytes) -> int:
    """
    :param name: the batch's name (``.gz`` at the end: ``data`` is gzip'd).
    :param data: the batch's bytes.
    :returns: the records it holds (one per line).
    """
    text = gzip.decompress(data) if name.endswith(".gz") else data
    return text.count(b"\n")


def _written(path: Path) -> tuple[int, int, str]:
    # Files written within one tick of the file system's clock: by name, shorter first
    # (``...-node.jsonl`` was cut before ``...-node-2.jsonl``).
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return mtime, len(path.name), path.name


class Spool:
    """
    :param directory: where batches are kept (created when missing).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def scan(self) -> tuple[list[SpooledBatch], int]:
        """
        Find the batches a previous run left, oldest (written first) first, and remove
        cut-off temporaries.

        :returns: the batches, and how many temporary files were removed.
        :raises OSError: when the directory cannot be created or read.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        batches: list[SpooledBatch] = []
        removed = 0
        for path in sorted(self.directory.iterdir(), key=_written):
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)
                removed += 1
            elif path.name.startswith(BATCH_PREFIX) and path.is_file():
                data = path.read_bytes()
                try:
                    records = count_lines(path.name, data)
                except (OSError, EOFError):  # a truncated gzip stream: still uploaded as it is
                    records = 0
                batches.append(SpooledBatch(path.name, len(data), records))
        return batches, removed

    def store(self, name: str, data: bytes, records: int) -> SpooledBatch:
        """
        Write one batch (temporary name, then rename).

        :param name: its final name.
        :param data: its bytes.
        :param records: the records it holds.
        :returns: the spooled batch.
        :raises OSError: when it cannot be written (the temporary file is removed).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = self.directory / (TEMP_PREFIX + name)
        try:
            temp.write_bytes(data)
            os.replace(temp, self.directory / name)
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        return SpooledBatch(name, len(data), records)

    def read(self, batch: SpooledBatch) -> tuple[bytes, str]:
        """
        :param batch: a spooled batch.
        :returns: its bytes and their hex SHA-256 (what the upload signs; hashed here, in the
            thread, where it does not hold up the reactor).
        :raises OSError: when it cannot be read.
        """
        data = (self.directory / batch.name).read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    def remove(self, batch: SpooledBatch) -> None:
        """
        :param batch: a batch S3 has stored.
        :raises OSError: when it cannot be removed.
        """
        (self.directory / batch.name).unlink(missing_ok=True)

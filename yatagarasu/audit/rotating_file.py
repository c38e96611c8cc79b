"""
An append-only file with rotation by size and by day (``audit_log.file``), written from the
file sink's writer thread only: every method here blocks on the filesystem.

Backups are named ``<file>.<UTC time of rotation>`` (``audit.log.20261202T041000Z``, with a
``-1``, ``-2``... suffix when two rotations fall in the same second); only the newest
``max_backup_files`` are kept.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

#: the backup suffix's time format
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def _day(when: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when))


class RotatingFile:
    """
    :param path: the file; its directory is created on first write.
    :param max_bytes: rotate before a write would make the file larger (``0``: never by size).
    :param daily: also rotate at the first write of a new UTC day.
    :param max_backups: rotated files kept (the oldest are deleted; ``0``: none kept).
    """

    def __init__(self, path: Path, max_bytes: int, *, daily: bool, max_backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._daily = daily
        self._max_backups = max_backups
        self._file: BinaryIO | None = None
        self._size = 0
        self._opened_day = ""

    def write(self, data: bytes, now: float) -> None:
        """
        Append ``data`` (whole lines), rotating first when due, and flush it to the OS.

        :param data: the bytes.
        :param now: the current time (epoch seconds), for daily rotation and backup names.
        :raises OSError: the directory, the file or the write failed.
        """
        if self._file is None:
            self._open(now)
        if self._daily and _day(now) != self._opened_day:
            self.rotate(now)
        if not self._max_bytes or self._size + len(data) <= self._max_bytes:
            self._append(data)
        else:
            self._append_rotating(data, now)
        assert self._file is not None
        self._file.flush()

    def _append(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)

    def _append_rotating(self, data: bytes, now: float) -> None:
        """
        Append ``data`` line by line, rotating before a line would carry the file past
        ``max_bytes`` (a batch of many lines does not; a line longer than a whole file gets
        a file of its own).
        """
        run: list[bytes] = []
        run_size = 0
        for line in data.splitlines(keepends=True):
            if self._size + run_size + len(line) > self._max_bytes and (self._size or run):
                if run:
                    self._append(b"".join(run))
                    run, run_size = [], 0
                self.rotate(now)
            run.append(line)
            run_size += len(line)
        if run:
            self._append(b"".join(run))

    def reopen(self) -> None:
        """Close the file; the next write opens the path again (after logrotate moved it)."""
        self.close()

    def close(self) -> None:
        """Close the file (the next write reopens it)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def rotate(self, now: float) -> Path:
        """
        Move the file aside under a timestamped name, delete the oldest backups, start anew.

        :param now: the time of rotation (epoch seconds).
        :returns: the backup's path.
        """
        self.close()
        stamp = time.strftime(STAMP_FORMAT, time.gmtime(now))
        backup = self.path.with_name(f"{self.path.name}.{stamp}")
        n = 0
        while backup.exists():
            n += 1
            backup = self.path.with_name(f"{self.path.name}.{stamp}-{n}")
        if self.path.exists():
            os.replace(self.path, backup)
        self._prune()
        self._open(now)
        return backup

    def backups(self) -> list[Path]:
        """:returns: the rotated files, oldest first."""
        prefix = f"{self.path.name}."
        found = [p for p in self.path.parent.glob(f"{self.path.name}.*") if p.is_file()]
        named = [p for p in found if p.name[len(prefix) :][:1].isdigit()]
        return sorted(named, key=lambda p: _stamp_order(p.name[len(prefix) :]))

    def _prune(self) -> None:
        backups = self.backups()
        excess = len(backups) - self._max_backups
        for old in backups[: max(0, excess)]:
            old.unlink(missing_ok=True)

    def _open(self, now: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 (kept open between writes)
        self._size = self._file.tell()
        # A file kept from before a restart (or a reopen) belongs to the day it was last
        # written, so the first write of a later day rotates it.
        self._opened_day = _day(self.path.stat().st_mtime if self._size else now)


def _stamp_order(suffix: str) -> tuple[str, int]:
    stamp, _, n = suffix.partition("-")
    return stamp, int(n) if n.isdigit() else 0

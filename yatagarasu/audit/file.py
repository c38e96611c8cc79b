"""
The built-in ``file`` audit sink: JSON lines, buffered, written by a thread, rotated.

Each record is serialized as it is queued, on the reactor thread (a few microseconds; a
string, which the garbage collector never scans, is queued rather than the record), and
written in batches: every ``flush_interval_seconds``, whenever ``batch_records`` are queued,
on ``SIGUSR1`` (which reopens the file first) and at shutdown. A batch is appended by the
reactor's thread pool, one batch at a time, so a slow disk never blocks the reactor.
Serializing in the thread would not: a Python thread that computes holds the GIL for up to
5 ms at a time, and the reactor waits for it after every ``epoll`` (measured: a third of the
throughput lost). Between timer flushes only full batches are handed to the thread (a
hand-off per few records cost more than the write). While a batch is being written the queue
keeps growing up to ``max_queue_records``, beyond which records are dropped and counted. A
failed write is logged and its records counted as failed; the proxy goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from yatagarasu.audit.flushing import FlushingService
from yatagarasu.audit.record import JsonEncoder
from yatagarasu.audit.rotating_file import RotatingFile
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink, IAuditSinkFactory
from yatagarasu.values import MIB, AuditRecord

log = Logger()

T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking function somewhere (a thread) and reports its result."""

    def __call__(self, work: Callable[[], T]) -> Deferred[T]: ...


def run_now(work: Callable[[], T]) -> Deferred[T]:
    """A :class:`Runner` for reactors without threads (tests): runs ``work`` at once."""
    return succeed(work())


def thread_runner(reactor: Any) -> Runner:
    """
    :param reactor: the reactor.
    :returns: a runner using the reactor's thread pool, or :func:`run_now` when it has none.
    """
    if not IReactorThreads.providedBy(reactor):
        return run_now

    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return run


@dataclass(frozen=True)
class FileSinkSettings:
    """The ``audit_log.file`` keys (``path`` is also accepted as the seed's ``file_path``)."""

    path: str = field(metadata={"aliases": ("file_path",)})
    max_file_size_mb: float = 100.0
    max_backup_files: int = 5
    rotation_policy: Literal["size", "daily"] = "size"
    flush_interval_seconds: float = 1.0
    batch_records: int = 1000
    max_queue_records: int = 100_000

    def check(self, path: str) -> None:
        if not self.path:
            raise ConfigError(join(path, "path"), "must not be empty")
        for key in ("max_file_size_mb", "flush_interval_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(join(path, key), "must be > 0")
        for key in ("batch_records", "max_queue_records"):
            if getattr(self, key) < 1:
                raise ConfigError(join(path, key), "must be >= 1")
        if self.max_backup_files < 0:
            raise ConfigError(join(path, "max_backup_files"), "must be >= 0")


@implementer(IAuditSink)
class FileSink:
    """
    :param settings: the validated ``audit_log.file`` section.
    :param clock: time (the flush timer, daily rotation, backup names).
    :param run: where batches are written (:func:`thread_runner`).
    """

    name = "file"

    def __init__(self, settings: FileSinkSettings, clock: IReactorTime, run: Runner) -> None:
        self.settings = settings
        self.counts = {"written": 0, "failed": 0, "dropped": 0}
        self._clock = clock
        self._run = run
        self._file = RotatingFile(
            Path(settings.path),
            int(settings.max_file_size_mb * MIB),
            daily=settings.rotation_policy == "daily",
            max_backups=settings.max_backup_files,
        )
        self._encode = JsonEncoder()
        self._max_queue = settings.max_queue_records
        self._batch = settings.batch_records
        self._queue: list[str] = []
        self._reopen = False
        self._writing = False
        self._drain = False
        self._waiters: list[Deferred[None]] = []
        self._service = FlushingService(
            clock, settings.flush_interval_seconds, self.flush, self._flush_and_close
        )

    def write(self, record: AuditRecord) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.counts["dropped"] += 1
            return
        queue.append(self._encode(record))
        if len(queue) >= self._batch and not self._writing:
            self._writing = True
            Deferred.fromCoroutine(self._write_all())

    def reopen(self) -> None:
        self._reopen = True
        self.flush()

    def services(self) -> list[IService]:
        return [self._service]

    def flush(self) -> Deferred[None]:
        """
        Write everything queued so far.

        :returns: fires once what was queued when it was called is written (or failed), and
            no batch is being written.
        """
        done: Deferred[None] = Deferred()
        self._waiters.append(done)
        self._drain = True
        if not self._writing:
            self._writing = True
            Deferred.fromCoroutine(self._write_all())
        return done

    def _flush_and_close(self) -> Deferred[None]:
        flushed = self.flush()
        flushed.addCallback(lambda _: self._run(self._file.close))
        return flushed

    def _due(self) -> bool:
        # A flush (timer, reopen, stop) writes everything; otherwise only full batches.
        queued = len(self._queue)
        return self._reopen or bool(
            queued and (self._drain or queued >= self.settings.batch_records)
        )

    async def _write_all(self) -> None:
        try:
            while self._due():
                batch, self._queue = self._queue, []
                reopen, self._reopen = self._reopen, False
                self._drain = False
                if batch:
                    batch.append("")  # the last line's newline
                count = len(batch) - 1 if batch else 0
                data = "\n".join(batch).encode("utf-8")
                work = partial(self._append, data, reopen, self._clock.seconds())
                try:
                    await self._run(work)
                except Exception as e:
                    self.counts["failed"] += count
                    log.error(
                        "audit file {path}: write failed ({error}); {count} record(s) lost",
                        path=str(self._file.path),
                        error=str(e),
                        count=count,
                    )
                else:
                    self.counts["written"] += count
        finally:
            self._writing = False
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _append(self, data: bytes, reopen: bool, now: float) -> None:
        # In the writer thread: file system calls only (they release the GIL).
        if reopen:
            self._file.reopen()
        self._file.write(data, now)


@implementer(IPlugin, IAuditSinkFactory)
class FileSinkFactory:
    """The ``file`` sink's plugin factory."""

    name = "file"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> FileSink:
        parsed = from_raw(FileSinkSettings, settings, path)
        return FileSink(parsed, reactor, thread_runner(reactor))

"""
The built-in ``s3`` audit sink (``audit_log.s3_export``): records in batches, spooled to a
local directory, uploaded to S3 with a signed PUT, and removed from the spool only once S3
answered 200.

A batch is cut every ``export_interval_seconds``, as soon as ``max_batch_records`` records
wait, and when the sink stops (after the drain, at ``SIGTERM``). It is named
``{path_prefix}yatagarasu-audit-YYYY-MM-DD-HH-MM-SS-<instance>.jsonl`` (``.jsonl.gz`` with
``compress``; UTC, the time of the cut; a second batch cut in the same second gets ``-2``,
``-3``... after the instance) and written to the spool (:mod:`.spool`) by a thread. One upload
at a time, oldest first; a failed one (S3 unreachable, too slow, or any answer but 200) is
counted and retried after an exponential backoff with jitter, on the injected clock, for as
long as it takes. The spool is scanned when the sink starts, so batches a previous run could
not deliver are sent too.

Bounds: records are encoded into JSON lines as they arrive (the lines wait, not the
records); the spool holds at most
``max_spool_mb``: a batch that does not fit is dropped, its records counted as ``dropped`` and
logged. Nothing waits for S3 on the request path.
"""

from __future__ import annotations

import gzip
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from random import Random

from twisted.application.service import IService
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from yatagarasu.audit.file import Runner
from yatagarasu.audit.flushing import FlushingService
from yatagarasu.audit.record import JsonEncoder
from yatagarasu.audit.spool import BATCH_PREFIX, Spool, SpooledBatch
from yatagarasu.config.schema import RetryConfig, S3Config
from yatagarasu.config.typed import join
from yatagarasu.errors import ConfigError, UpstreamError
from yatagarasu.interfaces import IAuditSink, ISpoolingAuditSink
from yatagarasu.values import MIB, AuditRecord

log = Logger()

#: what an ``instance`` may be made of (it is part of a file name and an S3 key)
INSTANCE = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: uploads a batch: ``put(key, body, sha256_hex)`` → S3's status code and error code
Put = Callable[[str, bytes, str], Awaitable[tuple[int, str | None]]]


def default_instance() -> str:
    """:returns: this host's name, with anything but ``[A-Za-z0-9._-]`` replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "yatagarasu"


@dataclass(frozen=True)
class S3ExportSettings:
    """
    The ``audit_log.s3_export`` keys: where batches go (like a bucket's ``s3`` block:
    ``bucket``, ``region``, ``endpoint``, ``access_key``, ``secret_key``, ``session_token``,
    ``timeout``), how they are named, and the local spool.
    """

    bucket: str = field(metadata={"aliases": ("s3_bucket",)})
    spool_dir: str
    region: str = "us-east-1"
    endpoint: str | None = None
    access_key: str = ""
    secret_key: str = field(default="", repr=False)  # never in a log line
    session_token: str | None = field(default=None, repr=False)
    timeout: float = 20.0
    path_prefix: str = field(default="", metadata={"aliases": ("s3_path_prefix",)})
    export_interval_seconds: float = 300.0
    compress: bool = False
    instance: str | None = None
    max_batch_records: int = 20_000
    max_spool_mb: float = 1024.0
    retry_initial_backoff_seconds: float = 1.0
    retry_max_backoff_seconds: float = 60.0
    shutdown_timeout_seconds: float = 10.0

    def s3_config(self) -> S3Config:
        """:returns: the S3 client's settings (one attempt per upload: the sink retries)."""
        return S3Config(
            bucket=self.bucket,
            region=self.region,
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.session_token,
            timeout=self.timeout,
            connection_pool_size=1,
            retry=RetryConfig(max_attempts=1),
        )

    def check(self, path: str) -> None:
        self.s3_config().check(path)
        if not self.spool_dir:
            raise ConfigError(join(path, "spool_dir"), "must not be empty")
        if self.path_prefix.startswith("/"):
            raise ConfigError(join(path, "path_prefix"), "must not start with '/'")
        if self.instance is not None and not INSTANCE.fullmatch(self.instance):
            raise ConfigError(join(path, "instance"), "expected 1-64 of [A-Za-z0-9._-]")
        for key in (
            "export_interval_seconds",
            "max_spool_mb",
            "retry_initial_backoff_seconds",
            "shutdown_timeout_seconds",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(join(path, key), "must be > 0")
        if self.retry_max_backoff_seconds < self.retry_initial_backoff_seconds:
            raise ConfigError(
                join(path, "retry_max_backoff_seconds"), "must be >= retry_initial_backoff_seconds"
            )
        if self.max_batch_records < 1:
            raise ConfigError(join(path, "max_batch_records"), "must be >= 1")


@implementer(IAuditSink, ISpoolingAuditSink)
class S3Sink:
    """
    :param settings: the validated ``audit_log.s3_export`` section.
    :param clock: time (the export timer, the backoff, batch names).
    :param run: where spool files are read and written (a thread).
    :param put: uploads one batch.
    :param close: closes the upload connections (at stop, after the last upload).
    :param random: the backoff's jitter.
    """

    name = "s3"

    def __init__(
        self,
        settings: S3ExportSettings,
        clock: IReactorTime,
        run: Runner,
        put: Put,
        close: Callable[[], Awaitable[None]],
        random: Random | None = None,
    ) -> None:
        self.settings = settings
        self.counts = {"written": 0, "failed": 0, "dropped": 0}
        self.upload_failures = 0
        self.spool_bytes = 0
        self.spool = Spool(Path(settings.spool_dir))
        self.instance = settings.instance or default_instance()
        self._clock = clock
        self._run = run
        self._put = put
        self._close = close
        self._random = random or Random()
        self._encode = JsonEncoder()
        self._max_batch = settings.max_batch_records
        self._lines: list[str] = []
        self._cut_wanted = False
        self._cutting = DeferredLock()
        self._index: list[SpooledBatch] = []
        self._names: set[str] = set()
        self._uploading: Deferred[None] | None = None
        self._sleeping: Deferred[None] | None = None
        self._failures_in_row = 0
        self._stopping = False
        self._service = FlushingService(
            clock, settings.export_interval_seconds, self.export, self._stop, self._start
        )

    # -- IAuditSink -----------------------------------------------------------------------

    def write(self, record: AuditRecord) -> None:
        lines = self._lines
        lines.append(self._encode(record))
        if len(lines) >= self._max_batch and not self._cut_wanted:
            self.export()

    def reopen(self) -> None:
        """Nothing to reopen: every batch is a new file and a new upload."""

    def services(self) -> list[IService]:
        return [self._service]

    # -- ISpoolingAuditSink ---------------------------------------------------------------

    @property
    def spool_files(self) -> int:
        """Batches in the spool, waiting to be uploaded."""
        return len(self._index)

    # -- batches --------------------------------------------------------------------------

    def export(self) -> Deferred[None]:
        """
        Cut what is queued into a batch, spool it and start uploading.

        :returns: fires once the batch is in the spool (or was dropped).
        """
        self._cut_wanted = True
        return self._cutting.run(lambda: Deferred.fromCoroutine(self._cut()))

    def _next_name(self) -> str:
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(self._clock.seconds()))
        suffix = ".jsonl.gz" if self.settings.compress else ".jsonl"
        base = f"{BATCH_PREFIX}{stamp}-{self.instance}"
        name, n = base + suffix, 1
        while name in self._names:
            n += 1
            name = f"{base}-{n}{suffix}"
        self._names.add(name)
        return name

    async def _cut(self) -> None:
        self._cut_wanted = False
        lines, self._lines = self._lines, []
        count = len(lines)
        if not count:
            return
        name = self._next_name()
        lines.append("")  # the last line's newline
        data = "\n".join(lines).encode("utf-8")
        if self.settings.compress:
            data = await self._run(partial(gzip.compress, data, mtime=0))
        limit = int(self.settings.max_spool_mb * MIB)
        if self.spool_bytes + len(data) > limit:
            self.counts["dropped"] += count
            log.error(
                "s3 audit sink: the spool is full ({size} of {limit} bytes); batch {name} with"
                " {count} record(s) dropped",
                size=self.spool_bytes,
                limit=limit,
                name=name,
                count=count,
            )
            return
        try:
            batch = await self._run(partial(self.spool.store, name, data, count))
        except OSError as e:
            self.counts["failed"] += count
            log.error(
                "s3 audit sink: cannot write {name} to the spool ({error}); {count} record(s) lost",
                name=name,
                error=str(e),
                count=count,
            )
            return
        self._add([batch])

    def _add(self, batches: list[SpooledBatch], *, earlier: bool = False) -> None:
        # Oldest first: batches of an earlier run go before those of this one.
        self._index = [*batches, *self._index] if earlier else [*self._index, *batches]
        self._names.update(b.name for b in batches)
        self.spool_bytes += sum(b.size for b in batches)
        self._upload_soon()

    # -- uploads --------------------------------------------------------------------------

    def _upload_soon(self) -> None:
        if self._uploading is not None or not self._index:
            return
        uploading = Deferred.fromCoroutine(self._upload_all())
        if not uploading.called:  # (it may have finished already, on a synchronous runner)
            self._uploading = uploading
            uploading.addBoth(self._uploaded)

    def _uploaded(self, result: object) -> object:
        self._uploading = None
        return result

    async def _upload_all(self) -> None:
        while self._index:
            if await self._upload(self._index[0]):
                self._failures_in_row = 0
                continue
            if self._stopping:
                return  # at shutdown: what is left stays in the spool for the next start
            self._failures_in_row += 1
            await self._back_off()

    async def _back_off(self) -> None:
        settings = self.settings
        delay = min(
            settings.retry_max_backoff_seconds,
            settings.retry_initial_backoff_seconds * 2 ** (self._failures_in_row - 1),
        ) * self._random.uniform(0.5, 1.0)
        self._sleeping = deferLater(self._clock, delay)
        try:
            await self._sleeping
        except CancelledError:
            pass  # the sink stops: try once more at once
        finally:
            self._sleeping = None

    async def _upload(self, batch: SpooledBatch) -> bool:
        key = self.settings.path_prefix + batch.name
        try:
            data, digest = await self._run(partial(self.spool.read, batch))
            status, code = await self._put(key, data, digest)
        except UpstreamError as e:
            problem = e.message
        except OSError as e:
            problem = str(e)
        else:
            if status == 200:
                await self._forget(batch)
                return True
            problem = f"S3 answered {status}" + (f" {code}" if code else "")
        self.upload_failures += 1
        log.warn(
            "s3 audit sink: upload of {key} failed ({problem}); {files} batch(es) wait in the"
            " spool",
            key=key,
            problem=problem,
            files=len(self._index),
        )
        return False

    async def _forget(self, batch: SpooledBatch) -> None:
        self._index.remove(batch)
        self.spool_bytes -= batch.size
        self.counts["written"] += batch.records
        try:
            await self._run(partial(self.spool.remove, batch))
        except OSError as e:
            log.error(
                "s3 audit sink: uploaded {name} but cannot remove it from the spool ({error})",
                name=batch.name,
                error=str(e),
            )

    # -- service --------------------------------------------------------------------------

    def _start(self) -> None:
        Deferred.fromCoroutine(self._load())

    async def _load(self) -> None:
        try:
            batches, removed = await self._run(self.spool.scan)
        except OSError as e:
            log.error(
                "s3 audit sink: cannot read the spool {directory} ({error})",
                directory=str(self.spool.directory),
                error=str(e),
            )
            return
        if removed:
            log.warn(
                "s3 audit sink: removed {count} cut-off batch file(s) from the spool",
                count=removed,
            )
        if batches:
            log.info(
                "s3 audit sink: {count} batch(es) from an earlier run wait in the spool",
                count=len(batches),
            )
        self._add(batches, earlier=True)

    def _stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._flush_and_close())

    async def _flush_and_close(self) -> None:
        self._stopping = True
        await self.export()
        if self._sleeping is not None:
            self._sleeping.cancel()
        self._upload_soon()
        uploading = self._uploading
        if uploading is not None:
            timeout = self.settings.shutdown_timeout_seconds
            uploading.addTimeout(timeout, self._clock)
            try:
                await uploading
            except TimeoutError:
                log.warn(
                    "s3 audit sink: uploads still running after {timeout:g}s at shutdown",
                    timeout=timeout,
                )
        if self._index:
            log.warn(
                "s3 audit sink: {count} batch(es) stay in the spool {directory} for the next start",
                count=len(self._index),
                directory=str(self.spool.directory),
            )
        await self._close()

"""
The ``disk`` cache layer: one file per entry, and an in-memory index of them rebuilt by a scan
on start. How the files, the index, the threads and the errors work is described in
docs/CACHING.md ("Disk layer internals").
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from yatagarasu.cache.disk.files import (
    Stamp,
    read_entry,
    remove_if_same,
    unlink_all,
    write_entry,
)
from yatagarasu.cache.disk.format import PRELUDE_SIZE, CorruptEntry, encode_trailer, entry_path
from yatagarasu.cache.disk.scan import Counters, Record, ScanReport, matches, scan, sweep
from yatagarasu.cache.disk.settings import DiskCacheSettings
from yatagarasu.cache.disk.writer import DiskCacheWriter
from yatagarasu.interfaces import (
    ICacheWriter,
    IErrorCountingCacheLayer,
    IImmediateCacheLayer,
    ISwitchableCacheLayer,
)
from yatagarasu.values import CacheEntry, CacheKey, FileBody, LayerStats

#: The package's one log namespace (as when the layer was one module).
log = Logger(namespace="yatagarasu.cache.disk")

T = TypeVar("T")

_LOG_INTERVAL = 10.0
#: At most this many jobs of one layer run in the reactor's thread pool at once (the pool is
#: shared with name resolution; Twisted's default has 10 threads).
THREADS = 4
#: A hit's body up to this many bytes is read with the entry (one ``pread``) and served from
#: memory; a longer one is returned as a :class:`FileBody`, streamed by a producer.
INLINE_BODY = 128 * 1024
#: The decoded metadata of this many recently hit entries is kept, each checked against its
#: file's inode, size and mtime on every hit (a changed file is read again).
HOT_ENTRIES = 4096


@dataclass(eq=False)
class _Ticket:
    """A write in flight; a delete or purge covering its key cancels it."""

    key: CacheKey
    retain_until: float = float("inf")
    cancelled: bool = False


@dataclass(slots=True)
class _Hot:
    """A recently hit entry: where its file is, which file it was, and its metadata."""

    digest: str
    path: str
    stamp: Stamp
    #: the entry as a :class:`FileBody` hit
    entry: CacheEntry


@implementer(IImmediateCacheLayer, ISwitchableCacheLayer, IErrorCountingCacheLayer)
class DiskCacheLayer:
    """
    The ``disk`` cache layer (format, threads and errors: docs/CACHING.md).

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
        self._index: OrderedDict[str, Record] = OrderedDict()
        self._hot: OrderedDict[CacheKey, _Hot] = OrderedDict()
        self._total = Counters()
        self._buckets: dict[str, Counters] = {}
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

    def _counters(self, bucket: str) -> Counters:
        counters = self._buckets.get(bucket)
        if counters is None:
            counters = self._buckets[bucket] = Counters()
        return counters

    def _remember(self, digest: str, record: Record) -> None:
        old = self._index.pop(digest, None)
        if old is not None:
            self._account(old, -1)
        self._index[digest] = record
        self._account(record, +1)

    def _forget(self, digest: str) -> Record | None:
        record = self._index.pop(digest, None)
        if record is not None:
            self._account(record, -1)
            self._hot.pop(record.key, None)
        return record

    def _account(self, record: Record, sign: int) -> None:
        for counters in (self._total, self._counters(record.key.bucket)):
            counters.items += sign
            counters.bytes += sign * record.size

    def _evict_if_needed(self) -> None:
        victims: list[str] = []
        while self._total.bytes > self.max_size and self._index:
            digest, record = self._index.popitem(last=False)
            self._account(record, -1)
            self._hot.pop(record.key, None)
            self.evictions += 1
            self._total.evictions += 1
            self._counters(record.key.bucket).evictions += 1
            victims.append(entry_path(self.root, digest))
        if victims:
            self._background("evict", None, unlink_all, victims, False)

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
            await self.in_thread(unlink_all, [path], True)
            return False
        self._remember(digest, Record(ticket.key, size, ticket.retain_until))
        self._evict_if_needed()
        return True

    # -- ICacheLayer ------------------------------------------------------------------------

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        """
        :meth:`lookup`, as a Deferred (``ICacheLayer``).

        :param key: what to look up.
        :returns: the entry, or ``None``.
        """
        return succeed(self.lookup(key))

    def lookup(self, key: CacheKey) -> CacheEntry | None:
        """
        Look the key's file up, inline on the reactor thread (``IImmediateCacheLayer``; see
        docs/CACHING.md, "Disk layer internals"). Files written by other processes are found;
        expired, corrupt or foreign files are misses (and removed).

        :param key: what to look up.
        :returns: the entry -- its body as ``bytes`` up to :data:`INLINE_BODY` bytes, else a
            :class:`FileBody` -- or ``None``.
        """
        if self._closed:
            return None
        if self._scan is None:
            self.start()
        counters = self._counters(key.bucket)
        try:
            found = self._lookup(key)
        except Exception as exc:  # e.g. a key text UTF-8 cannot encode: a miss, never a raise
            self._error("get", exc, key)
            found = None
        if found is None:
            self._total.misses += 1
            counters.misses += 1
            return None
        self._total.hits += 1
        counters.hits += 1
        return found

    def _lookup(self, key: CacheKey) -> CacheEntry | None:
        hot = self._hot.get(key)
        if hot is None:
            digest = key.digest
            path = entry_path(self.root, digest)
            known, length = None, 0
        else:
            digest, path = hot.digest, hot.path
            known, length = hot.stamp, hot.entry.length
        try:
            read = read_entry(path, known, length, INLINE_BODY)
        except FileNotFoundError:
            self._hot.pop(key, None)
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
        meta = read.meta
        if meta is None:
            assert hot is not None  # the file is the one it describes
            self._hot.move_to_end(key)
            found = hot.entry
        else:
            if meta.key != key:
                log.warn(
                    "disk cache: {path} holds {other}, not {cache_key}; removing it",
                    path=path,
                    other=meta.key.text,
                    cache_key=key.text,
                )
                self._drop(digest, path, read.stamp.inode, key)
                return None
            found = CacheEntry(
                headers=meta.headers,
                body=FileBody(path, PRELUDE_SIZE, meta.body_length),
                stored_at=meta.stored_at,
                expires_at=meta.expires_at,
                retain_until=meta.retain_until,
                revalidate=meta.revalidate,
            )
            self._hot.pop(key, None)
            self._hot[key] = _Hot(digest, path, read.stamp, found)
            if len(self._hot) > HOT_ENTRIES:
                self._hot.popitem(last=False)
        if found.retain_until <= self._reactor.seconds():
            self._drop(digest, path, read.stamp.inode, key)
            return None
        if self._scanned:
            record = self._index.get(digest)
            size = read.stamp.size
            if record is None or record.size != size or record.retain_until != found.retain_until:
                self._remember(digest, Record(key, size, found.retain_until))
                self._evict_if_needed()
            else:
                self._index.move_to_end(digest)
        return found if read.body is None else found.with_body(read.body)

    def _drop(self, digest: str, path: str, inode: int | None, key: CacheKey) -> None:
        self._hot.pop(key, None)
        if self._scanned:
            self._forget(digest)
        self._background("remove", key, remove_if_same, path, inode)

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
                    write_entry, self.root, digest, entry.body, trailer, lambda: ticket.cancelled
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
        removed = await self.in_thread(unlink_all, [entry_path(self.root, digest)], True)
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
        self._cancel(lambda k: matches(k, bucket, prefix))
        await self.start()
        for digest in [d for d, r in self._index.items() if matches(r.key, bucket, prefix)]:
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
            counters, max_size = self._buckets.get(bucket, Counters()), 0
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


def _fire_and_pass(result: T, waiter: Deferred[None]) -> T:
    waiter.callback(None)
    return result

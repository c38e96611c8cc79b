"""
The disk layer's streaming writer: a body is written to a temp file while it is served, then
committed by appending the metadata and renaming the file onto the entry's name.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from yatagarasu.cache.disk.files import TempFile
from yatagarasu.cache.disk.format import encode_trailer, entry_path
from yatagarasu.errors import YatagarasuError
from yatagarasu.interfaces import ICacheWriter
from yatagarasu.values import MIB, CacheEntry, CacheKey

if TYPE_CHECKING:
    from yatagarasu.cache.disk.layer import DiskCacheLayer


class DiskCacheError(YatagarasuError):
    """A streamed body could not be committed (I/O error, too large, too slow)."""


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
        """
        :param layer: the layer that commits the entry.
        :param key: the key being written.
        :raises UnicodeEncodeError: for a key text UTF-8 cannot encode.
        """
        self._layer = layer
        self._key = key
        self._digest = key.digest
        self._ticket = layer._ticket(key, self._digest)
        self._directory = os.path.dirname(entry_path(layer.root, self._digest))
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._length = 0
        self._temp: TempFile | None = None
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
            self._temp = TempFile(self._directory)
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


def _failed(message: str) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(DiskCacheError(message))
    return d

"""
Serving objects cached as slices (see :mod:`yatagarasu.cache.slicing`).

A request for a sliced object is answered from the slices its range touches (the whole object
for a plain GET): each slice is looked up in the layers and, when missing, fetched from S3 with
a ranged GET — one fetch per slice however many requests want it at once (a
:class:`~yatagarasu.web.flights.Flight`). The answer is written slice after slice at the
client's pace (:class:`PacedWriter`), so a connection holds about one slice in memory.

A slice fetch answered with another ``ETag`` (or length) than the manifest's means the object
changed: the old manifest and slices are dropped and the new version's manifest stored. Before
the first body byte went out the request starts over on the new version; after, the client
connection is aborted — never a body mixing two versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from yatagarasu.cache.from_config import BucketCachePolicy
from yatagarasu.cache.slicing import SliceManifest, client_headers, manifest_entry, manifest_of
from yatagarasu.cache.tiered import TieredCache
from yatagarasu.errors import HTTPError, UpstreamError
from yatagarasu.http.conditionals import NO_CONDITIONS
from yatagarasu.http.fields import first_header
from yatagarasu.http.freshness import Freshness, freshness
from yatagarasu.http.ranges import MAX_POSITION, Unsatisfiable
from yatagarasu.s3.errors import precondition_failed, range_not_satisfiable, upstream_error
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import CacheEntry, CacheKey, MappedBody
from yatagarasu.web.flights import Flight
from yatagarasu.web.site import ProxyRequest
from yatagarasu.web.streaming import BodyRelay, ClientStalled, StreamTimeouts, abort_client
from yatagarasu.web.upstream import STORED_RESPONSE_HEADERS, Discard

log = Logger()

#: how many times a request starts over because the object changed under it
MAX_RESTARTS = 3

_CONTENT_RANGE = re.compile(rb"bytes ([0-9]+)-([0-9]+)/([0-9]+)")


class ObjectChanged(Exception):
    """
    A slice fetch found another version of the object than the manifest's.

    :ivar manifest: the new version's manifest, or ``None`` when the new version is not to
        be sliced (at or below the threshold).
    :ivar preloaded: the new version's slice that was fetched (index, bytes), if whole.
    """

    def __init__(
        self, manifest: SliceManifest | None, preloaded: tuple[int, bytes] | None = None
    ) -> None:
        super().__init__("the object changed while it was served from slices")
        self.manifest = manifest
        self.preloaded = preloaded


@dataclass(frozen=True)
class _Piece:
    """A slice as S3 sent it: where it lies, in which version."""

    etag: bytes | None
    first: int
    total: int
    data: bytes
    headers: Headers


class _Abandon(Protocol):
    """Stop reading a body that is not wanted (the connection is not reused)."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.stopProducing()


def stored_headers(upstream: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """:returns: the headers of an S3 answer that are kept with a cached object."""
    return tuple(
        (name, value)
        for name in STORED_RESPONSE_HEADERS
        for value in (upstream.getRawHeaders(name) or ())[:1]
    )


class SlicedObjects:
    """
    The sliced objects of one bucket.

    :param cache: the tiered cache (manifests and slices are entries like any other).
    :param policy: the bucket's policy (slice size and threshold, TTL).
    :param client: the bucket's upstreams.
    :param clock: time (freshness, ``Age``, timeouts).
    :param timeouts: how long S3 and clients may stall.
    """

    def __init__(
        self,
        cache: TieredCache,
        policy: BucketCachePolicy,
        client: ReplicaSet,
        clock: IReactorTime,
        timeouts: StreamTimeouts,
    ) -> None:
        self._cache = cache
        self._policy = policy
        self._client = client
        self._clock = clock
        self._timeouts = timeouts
        self._flights: dict[CacheKey, Flight] = {}

    def sliceable(self, length: int) -> bool:
        """:returns: whether an object of ``length`` bytes is cached as slices."""
        return length > self._policy.slice_threshold

    # -- entry points ------------------------------------------------------------------

    async def serve(
        self,
        request: ProxyRequest,
        cache_key: CacheKey,
        manifest: SliceManifest,
        preloaded: tuple[int, bytes] | None = None,
    ) -> bool:
        """
        Answer a GET or HEAD from the slices of ``manifest`` (a fresh one).

        :param request: the request.
        :param cache_key: the object's key.
        :param manifest: what is known of the object.
        :param preloaded: a slice already in hand (index, bytes) of that manifest's version.
        :returns: ``False`` when nothing was sent because the object changed into one that is
            not sliced (the caller serves it the usual way).
        :raises HTTPError: S3's error for a slice (a 404 when the object went away), 304/412/
            416 answers; after bytes were sent the connection is aborted instead.
        """
        for _ in range(MAX_RESTARTS + 1):
            try:
                await self._serve_once(request, cache_key, manifest, preloaded)
            except ObjectChanged as changed:
                log.info(
                    "{key} changed while served from slices; starting over",
                    key=cache_key.text,
                )
                if changed.manifest is None:
                    return False
                manifest, preloaded = changed.manifest, changed.preloaded
            else:
                return True
        raise UpstreamError(502, "the object kept changing while it was read", retryable=False)

    async def probe(self, request: ProxyRequest, cache_key: CacheKey) -> bool:
        """
        A GET for an object with no fresh manifest: fetch the slice holding the start of the
        client's range (the first slice without one, or for a suffix range) to learn the
        object's length and version. A sliceable object gets its manifest and is served from
        slices; a smaller one is answered from that slice when it holds the range asked for
        (``BYPASS``, nothing stored).

        :returns: ``False`` when nothing was sent (the range reaches past the slice, or S3
            did not answer with a range): the caller serves it the usual way.
        """
        spec = request.conditions.range
        size = self._policy.slice_size
        suffix = spec is None or spec.first is None
        index = 0 if spec is None or spec.first is None else spec.first // size
        try:
            piece = await self._fetch(cache_key, index * size, size, probe=True)
        except HTTPError as e:
            if e.status == 416 and suffix:
                return False  # an empty object: a suffix range of it is answered whole
            raise
        if piece is None:
            return False
        manifest = await self._adopt(cache_key, piece, None)
        if manifest is None:
            return self._answer_piece(request, piece)
        return await self.serve(request, cache_key, manifest, (index, piece.data))

    def _answer_piece(self, request: ProxyRequest, piece: _Piece) -> bool:
        """Answer from a probe's bytes alone, when they hold what the client asked for."""
        modified = first_header(piece.headers, b"last-modified")
        conditions = request.conditions
        status = conditions.precondition_status(piece.etag, modified)
        if status is not None:
            _answer_condition(request, status, stored_headers(piece.headers), b"BYPASS")
            return True
        try:
            wanted = conditions.range_for(piece.total, piece.etag, modified)
        except Unsatisfiable:
            raise range_not_satisfiable(piece.total) from None
        first, length = (0, piece.total) if wanted is None else (wanted.first, wanted.length)
        start = first - piece.first
        if start < 0 or start + length > len(piece.data):
            return False
        request.set_cache_status(b"BYPASS")
        request.setResponseCode(200 if wanted is None else 206)
        for name, value in stored_headers(piece.headers):
            request.responseHeaders.setRawHeaders(name, [value])
        if wanted is not None:
            request.setHeader(b"content-range", wanted.content_range)
        request.setHeader(b"content-length", b"%d" % length)
        request.write(piece.data[start : start + length])
        request.finish()
        return True

    def remember(
        self,
        cache_key: CacheKey,
        headers: tuple[tuple[bytes, bytes], ...],
        total: int,
        fresh: Freshness,
    ) -> SliceManifest:
        """
        Store the manifest of a sliced object whose full body is arriving (a plain GET).

        :returns: the manifest (its slices are cut by :meth:`cutter`).
        """
        now = self._clock.seconds()
        retain = max(fresh.ttl, self._policy.stale_if_error)
        entry = manifest_entry(
            headers,
            total,
            self._policy.slice_size,
            now,
            now + fresh.ttl,
            now + fresh.ttl + retain,
            fresh.revalidate,
        )
        self._cache.store(cache_key, entry)
        manifest = manifest_of(entry)
        assert manifest is not None
        return manifest

    def cutter(self, cache_key: CacheKey, manifest: SliceManifest) -> SliceCutter:
        """:returns: a body sink that stores the slices of a full body as they complete."""
        return SliceCutter(self, cache_key, manifest)

    # -- one answer ----------------------------------------------------------------------

    async def _serve_once(
        self,
        request: ProxyRequest,
        cache_key: CacheKey,
        manifest: SliceManifest,
        preloaded: tuple[int, bytes] | None,
    ) -> None:
        entry = manifest.entry
        total = manifest.total
        wanted = None
        conditions = request.conditions
        if conditions is not NO_CONDITIONS:
            etag, modified = entry.header(b"etag"), entry.header(b"last-modified")
            status = conditions.precondition_status(etag, modified)
            if status is not None:
                _answer_condition(request, status, entry.headers, b"HIT")
                return
            try:
                wanted = conditions.range_for(total, etag, modified)
            except Unsatisfiable:
                raise range_not_satisfiable(total) from None
        first, length = (0, total) if wanted is None else (wanted.first, wanted.length)
        if request.method == b"HEAD":
            request.set_cache_status(b"HIT")
            self._write_head(request, manifest, wanted, length)
            request.finish()
            return
        size = manifest.slice_size
        low, high = first // size, (first + length - 1) // size
        data, fetched = await self._slice(cache_key, manifest, low, preloaded)
        request.set_cache_status(b"MISS" if fetched else b"HIT")
        self._write_head(request, manifest, wanted, length)
        writer = PacedWriter(request, self._clock, self._timeouts.send_seconds)
        try:
            for index in range(low, high + 1):
                if index != low:
                    try:
                        data, _ = await self._slice(cache_key, manifest, index, None)
                    except ObjectChanged:
                        # Bytes of the old version went out: the client must not take the
                        # rest of another version for the same body.
                        abort_client(request)
                        raise CancelledError("the object changed mid-body") from None
                start = index * size
                await writer.write(
                    data, max(first - start, 0), min(first + length - start, len(data))
                )
        finally:
            writer.close()
        if not request._disconnected:
            request.finish()

    def _write_head(
        self, request: ProxyRequest, manifest: SliceManifest, wanted: Any, length: int
    ) -> None:
        entry = manifest.entry
        headers = Headers()
        for name, value in client_headers(entry):
            headers.addRawHeader(name, value)
        lines = b"".join(
            b"%s: %s\r\n" % (name, value)
            for name, values in headers.getAllRawHeaders()
            for value in values
        )
        if entry.header(b"accept-ranges") is None:
            lines += b"Accept-Ranges: bytes\r\n"
        code = 200
        if wanted is not None:
            code = 206
            lines += b"Content-Range: %s\r\n" % wanted.content_range
        age = max(0, int(self._clock.seconds() - entry.stored_at))
        request.write_head(code, b"%sAge: %d\r\nContent-Length: %d\r\n" % (lines, age, length))

    # -- slices ----------------------------------------------------------------------------

    async def _slice(
        self,
        cache_key: CacheKey,
        manifest: SliceManifest,
        index: int,
        preloaded: tuple[int, bytes] | None,
    ) -> tuple[bytes | MappedBody, bool]:
        """
        :returns: slice ``index``'s bytes (in a memory file when the memory layer keeps it so),
            and whether they were fetched from S3 now.
        :raises ObjectChanged: S3 has another version of the object.
        """
        if preloaded is not None and preloaded[0] == index:
            return preloaded[1], True
        key = manifest.key(cache_key, index)
        first, length = manifest.span(index)
        found = await self._cache.get(key)
        if found is not None:
            data = await self._body(found.entry)
            if data is not None and len(data) == length:
                return data, False
        flight = self._flights.get(key)
        if flight is not None:
            waiter = flight.wait()
        else:
            flight = self._flights[key] = Flight()
            waiter = flight.wait()
            # The fetch is not the first client's: it completes (and is stored) even when
            # that client goes away, and the others keep waiting on it.
            fetching = Deferred.fromCoroutine(self._fetch_slice(cache_key, manifest, index))
            fetching.addBoth(self._landed, key, flight)
        piece = await waiter
        assert isinstance(piece, _Piece)
        if piece.etag != manifest.etag or piece.total != manifest.total:
            adopted = await self._adopt(cache_key, piece, manifest)
            whole = adopted is not None and (piece.first, len(piece.data)) == adopted.span(index)
            raise ObjectChanged(adopted, (index, piece.data) if whole else None)
        if piece.first != first or len(piece.data) != length:
            raise UpstreamError(
                502,
                f"S3 sent bytes {piece.first}+{len(piece.data)} for slice {index}",
                retryable=True,
            )
        return piece.data, True

    def _landed(self, result: _Piece | Failure, key: CacheKey, flight: Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.settle(result.value if isinstance(result, Failure) else result)

    async def _body(self, entry: CacheEntry) -> bytes | MappedBody | None:
        if isinstance(entry.body, (bytes, MappedBody)):  # a memory file is read as it is sent
            return entry.body
        try:
            return await self._cache.read_body(entry.body)
        except OSError:
            return None  # evicted meanwhile: fetch it

    async def _fetch_slice(
        self, cache_key: CacheKey, manifest: SliceManifest, index: int
    ) -> _Piece:
        first, length = manifest.span(index)
        piece = await self._fetch(cache_key, first, length, probe=False)
        assert piece is not None
        same = piece.etag == manifest.etag and piece.total == manifest.total
        if same and piece.first == first and len(piece.data) == length:
            self.store_slice(cache_key, manifest, index, piece.data)
        return piece

    async def _fetch(
        self, cache_key: CacheKey, first: int, length: int, *, probe: bool
    ) -> _Piece | None:
        """
        One ranged GET.

        :returns: the bytes S3 sent and the version they belong to; ``None`` for a probe S3
            answered without a usable range (not sliceable here).
        :raises HTTPError: S3's error answer; 502 for a slice fetch answered without a
            usable range.
        """
        last = min(first + length - 1, MAX_POSITION)  # a probe of an absurd range start
        headers = Headers({b"range": [b"bytes=%d-%d" % (first, last)]})
        response = await self._client.fetch(b"GET", cache_key.key, headers)
        if response.code == 416 and not probe:
            # The object shrank under the manifest: a version with no ETag known, which
            # makes the caller drop the manifest and serve the request anew.
            response.deliverBody(Discard())
            return _Piece(None, 0, 0, b"", response.headers)
        if response.code >= 400:
            if response.code in (403, 404, 410):
                await self._cache.delete(cache_key)
            raise await upstream_error(response, self._clock, self._timeouts.idle_seconds)
        etag = first_header(response.headers, b"etag")
        start, end, total = -1, -1, -1
        if response.code == 206:
            content_range = first_header(response.headers, b"content-range") or b""
            match = _CONTENT_RANGE.fullmatch(content_range)
            if match is not None:
                start, end, total = (int(g) for g in match.groups())
        elif response.code == 200 and response.length is not UNKNOWN_LENGTH:
            # The whole object instead of a range: it is shorter than the range asked for
            # (or S3 ignored the field, then it is refused below).
            start, end, total = 0, int(response.length) - 1, int(response.length)
        if not 0 <= start <= end < total or end - start + 1 > length:
            # Never read a body larger than one slice into memory.
            response.deliverBody(_Abandon())
            if probe:
                return None
            raise UpstreamError(
                502, f"S3 answered {response.code} to a slice's ranged GET", retryable=True
            )
        data = await self._read(response, end - start + 1)
        return _Piece(etag, start, total, data, response.headers)

    async def _read(self, response: IResponse, length: int) -> bytes:
        chunks: list[bytes] = []
        relay = BodyRelay(None, self._clock, self._timeouts, chunks.append, backpressure=False)
        response.deliverBody(relay)
        await relay.done
        data = b"".join(chunks)
        if len(data) != length:
            raise UpstreamError(502, "S3 cut a slice short", retryable=True)
        return data

    async def _adopt(
        self, cache_key: CacheKey, piece: _Piece, old: SliceManifest | None
    ) -> SliceManifest | None:
        """
        Take the version ``piece`` belongs to as the object's: drop the old manifest and its
        slices, store the new manifest and this slice.

        :returns: the new manifest, or ``None`` when that version is not sliceable, may not be
            stored (``no-store``, ``private``) or has no ETag to name its slices by.
        """
        if old is not None:
            await self._cache.delete(cache_key)
        fresh = freshness(
            piece.headers.getRawHeaders(b"cache-control") or (),
            first_header(piece.headers, b"expires"),
            first_header(piece.headers, b"date"),
            self._policy.ttl,
        )
        if piece.etag is None or not self.sliceable(piece.total) or not fresh.storable:
            return None
        manifest = self.remember(cache_key, stored_headers(piece.headers), piece.total, fresh)
        index, offset = divmod(piece.first, manifest.slice_size)
        if offset == 0 and len(piece.data) == manifest.span(index)[1]:
            self.store_slice(cache_key, manifest, index, piece.data)
        return manifest

    def store_slice(
        self, cache_key: CacheKey, manifest: SliceManifest, index: int, data: bytes
    ) -> None:
        """
        Store one slice in every layer that takes it (in the background). Slices are named
        by the version's ETag and never change: they are kept as long as the manifest they
        were cut under.
        """
        now = self._clock.seconds()
        entry = manifest.entry
        entry = CacheEntry(
            headers=((b"etag", manifest.etag),),
            body=data,
            stored_at=now,
            expires_at=now + (entry.expires_at - entry.stored_at),
            retain_until=now + (entry.retain_until - entry.stored_at),
        )
        self._cache.store(manifest.key(cache_key, index), entry)


class SliceCutter:
    """
    A body sink (see :class:`~yatagarasu.web.streaming.BodyRelay`) that cuts a full body
    into the slices of ``manifest`` and stores each one as soon as it is complete: at most
    one slice is held.
    """

    def __init__(self, sliced: SlicedObjects, cache_key: CacheKey, manifest: SliceManifest) -> None:
        self._sliced = sliced
        self._key = cache_key
        self._manifest = manifest
        self._index = 0
        self._pending = bytearray()
        self._aborted = False

    def __call__(self, data: bytes) -> None:
        if self._aborted:
            return
        self._pending += data
        while self._index < self._manifest.count:
            length = self._manifest.span(self._index)[1]
            if len(self._pending) < length:
                break
            piece = bytes(self._pending[:length])
            del self._pending[:length]
            self._sliced.store_slice(self._key, self._manifest, self._index, piece)
            self._index += 1
        if self._index >= self._manifest.count and self._pending:
            self.abort()  # more bytes than the length said: store nothing more

    def abort(self) -> None:
        """Stop cutting (the body failed): the slices stored so far are whole and stay."""
        self._aborted = True
        self._pending = bytearray()


@implementer(IPushProducer)
class PacedWriter:
    """
    Write bytes to a request in 64 KiB chunks, waiting while the client's connection is
    paused; a client that reads nothing for ``send_seconds`` is disconnected.

    :param request: the request (head already written).
    :param clock: time source.
    :param send_seconds: how long the client may stop reading.
    """

    CHUNK = 64 * 1024

    def __init__(self, request: ProxyRequest, clock: IReactorTime, send_seconds: float) -> None:
        self._request = request
        self._clock = clock
        self._send_seconds = send_seconds
        self._paused = False
        self._stopped = False
        self._resumed: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        request.registerProducer(self, True)

    async def write(self, data: bytes | MappedBody, start: int, end: int) -> None:
        """
        :param data: a slice's bytes, or its memory file (read a chunk at a time, so that a
            connection holds one chunk of it, not a copy of the slice).
        :param start: where the bytes to write start.
        :param end: where they end.
        :raises CancelledError: the client went away.
        :raises ClientStalled: the client stopped reading (its connection was cut).
        """
        for offset in range(start, end, self.CHUNK):
            if self._stopped or self._request._disconnected:
                raise CancelledError("the client went away")
            size = min(self.CHUNK, end - offset)
            if isinstance(data, MappedBody):
                chunk = data.read(offset, size)
            else:
                chunk = data[offset : offset + size]
            self._request.write(chunk)
            if self._paused:
                await self._wait()

    def _wait(self) -> Deferred[None]:
        self._resumed = Deferred()
        self._timer = self._clock.callLater(self._send_seconds, self._stalled)
        return self._resumed

    def _stalled(self) -> None:
        self._timer = None
        waiting, self._resumed = self._resumed, None
        abort_client(self._request)
        if waiting is not None and not waiting.called:
            waiting.errback(ClientStalled(f"the client read nothing for {self._send_seconds:g}s"))

    def _wake(self, failure: BaseException | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self._resumed = self._resumed, None
        if waiting is None or waiting.called:  # (cancelled: the request went away)
            return
        if failure is None:
            waiting.callback(None)
        else:
            waiting.errback(failure)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake(CancelledError("the client went away"))

    def close(self) -> None:
        """Unregister from the request (the writing is over, or failed)."""
        self._wake(CancelledError("the writing is over"))
        request = self._request
        if request.producer is self:
            if request.channel is not None:
                request.unregisterProducer()
            else:
                # The client went away (twisted.web dropped the channel): break the
                # request <-> writer cycle, which would wait for the cyclic collector.
                request.producer = None


def _answer_condition(
    request: ProxyRequest, status: int, headers: tuple[tuple[bytes, bytes], ...], label: bytes
) -> None:
    if status == 412:
        raise precondition_failed()
    request.set_cache_status(label)
    request.setResponseCode(304)
    for name, value in headers:
        if name in (b"etag", b"last-modified", b"cache-control", b"expires"):
            request.responseHeaders.setRawHeaders(name, [value])
    request.finish()

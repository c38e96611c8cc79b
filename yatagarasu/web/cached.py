"""
Serving a caching bucket: fresh hits from the cache, expired entries revalidated with a
conditional request, misses fetched once (request coalescing) and streamed to the client while
the cache fills, large or uncacheable objects streamed through.

``X-Cache``: ``HIT`` (fresh entry), ``MISS`` (fetched from S3 now, stored when it fits),
``BYPASS`` (not storable: too large, ``no-store``/``private``, a ``Range`` or ``HEAD`` on a
miss), ``STALE`` (expired entry served because S3 failed, within
``cache.stale_if_error_seconds``), ``REVALIDATED`` (expired entry confirmed by S3's ``304``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from yatagarasu.cache.from_config import BucketCachePolicy
from yatagarasu.cache.slicing import MANIFEST_HEADER, SliceManifest, manifest_of
from yatagarasu.cache.tiered import Lookup, TieredCache, WritePlan
from yatagarasu.errors import HTTPError, UpstreamError
from yatagarasu.http.conditionals import NO_CONDITIONS, Conditions, parse_entity_tags
from yatagarasu.http.dates import http_date
from yatagarasu.http.fields import first_header
from yatagarasu.http.freshness import Freshness, freshness
from yatagarasu.http.ranges import Unsatisfiable
from yatagarasu.observability.timings import CACHE_LOOKUP, Phase, RequestTimings
from yatagarasu.s3.errors import precondition_failed, range_not_satisfiable, upstream_error
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import MIB, CacheEntry, CacheKey, FileBody, MappedBody
from yatagarasu.web.flights import Flight
from yatagarasu.web.responses import write_error
from yatagarasu.web.site import ProxyRequest
from yatagarasu.web.sliced import SliceCutter, SlicedObjects
from yatagarasu.web.streaming import BodyRelay, FileRangeProducer, StreamTimeouts
from yatagarasu.web.upstream import (
    STORED_RESPONSE_HEADERS,
    Discard,
    fetch_object,
    relay_response,
)

log = Logger()


#: A coalesced follower should look the key up again: the leader committed it to a layer
#: that keeps bodies in files (disk).
LOOK_AGAIN = object()

#: Bodies up to this size that are being cached are read at S3's pace, not the leader
#: client's: followers are not held back by a slow first client. Larger ones keep
#: backpressure, and their followers fetch on their own.
DECOUPLED_FILL_LIMIT = 16 * MIB


@dataclass
class _Fill:
    """Collects a body for the cache while it streams."""

    plan: WritePlan
    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False

    def __call__(self, data: bytes) -> None:
        for writer in self.plan.writers:
            writer.write(data)
        if self.plan.buffered and not self.overflow:
            self.size += len(data)
            if self.size > self.limit:
                self.overflow = True
                self.chunks.clear()
            else:
                self.chunks.append(data)

    def abort(self) -> None:
        for writer in self.plan.writers:
            writer.abort()


@dataclass(frozen=True)
class _Admission:
    """What a fill decided from S3's headers: freshness, where to store, how to read."""

    fresh: Freshness
    plan: WritePlan
    #: read the body at S3's pace, not the client's (see :data:`DECOUPLED_FILL_LIMIT`)
    decoupled: bool
    #: cache the object as slices (it is above the bucket's slice threshold)
    sliced: bool = False


class CachedObjects:
    """
    The cache side of one bucket.

    :param bucket: the bucket's name (the cache key's first part).
    :param cache: the tiered cache.
    :param policy: TTL, item cap and stale-if-error of this bucket.
    :param client: the bucket's upstreams (replicas behind circuit breakers).
    :param clock: time (freshness, ``Age``, timeouts).
    :param timeouts: how long S3 and clients may stall while streaming.
    """

    def __init__(
        self,
        bucket: str,
        cache: TieredCache,
        policy: BucketCachePolicy,
        client: ReplicaSet,
        clock: IReactorTime,
        timeouts: StreamTimeouts,
    ) -> None:
        self._timeouts = timeouts
        self._bucket = bucket
        self._cache = cache
        self._policy = policy
        self._client = client
        self._clock = clock
        self._flights: dict[CacheKey, Flight] = {}
        self._sliced = (
            SlicedObjects(cache, policy, client, clock, timeouts) if policy.slices else None
        )

    def serve(self, request: ProxyRequest, key: str) -> Deferred[None] | None:
        """
        Answer a GET or HEAD for ``key``.

        :param request: the authorised request.
        :param key: the object key.
        :returns: ``None`` when the response was written at once (a fresh hit in a layer that
            answers at once, see :meth:`TieredCache.lookup`), else a Deferred that fires when
            it is complete (or failed).
        """
        cache_key = CacheKey(self._bucket, key)
        if request.timings is not None:
            return self._timed_lookup(request, cache_key, request.timings)
        found = self._cache.lookup(cache_key)
        # (not isinstance(found, Deferred): Deferred is an Awaitable, an ABC, a slow check)
        if found is None or isinstance(found, Lookup):
            return self._looked_up(found, request, cache_key)
        return found.addCallback(self._looked_up, request, cache_key)

    def _timed_lookup(
        self, request: ProxyRequest, cache_key: CacheKey, timings: RequestTimings
    ) -> Deferred[None] | None:
        """The lookup as one measured stage, each layer's answer a child span of it."""
        stage = timings.begin(CACHE_LOOKUP, "cache.lookup")
        found = self._cache.lookup(cache_key, stage)
        if found is None or isinstance(found, Lookup):
            return self._looked_up(_lookup_ended(found, stage, timings), request, cache_key)
        found.addCallbacks(
            _lookup_ended,
            stage.settle,
            callbackArgs=(stage, timings),
        )
        return found.addCallback(self._looked_up, request, cache_key)

    def _looked_up(
        self, lookup: Lookup | None, request: ProxyRequest, cache_key: CacheKey
    ) -> Deferred[None] | None:
        if lookup is not None:
            if lookup.entry.header(MANIFEST_HEADER) is not None:
                return Deferred.fromCoroutine(self._from_manifest(request, cache_key, lookup))
            if not lookup.entry.is_fresh(self._clock.seconds()):
                return Deferred.fromCoroutine(self._revalidate(request, cache_key, lookup))
            if self._answer(request, lookup.entry, b"HIT"):
                return None
            # A fresh entry whose body file vanished (evicted meanwhile): go to S3.
        return Deferred.fromCoroutine(self._fetch(request, cache_key))

    async def _from_manifest(
        self, request: ProxyRequest, cache_key: CacheKey, lookup: Lookup
    ) -> None:
        """
        The key holds a sliced object's manifest: a fresh one is served from slices; an
        expired one is checked again with the fetch of one slice (:meth:`SlicedObjects.probe`:
        the slices of an unchanged ETag are kept).
        """
        manifest = manifest_of(lookup.entry)
        if self._sliced is not None and manifest is not None:
            if lookup.entry.is_fresh(self._clock.seconds()):
                if await self._sliced.serve(request, cache_key, manifest):
                    return
            elif request.method == b"GET" and await self._sliced.probe(request, cache_key):
                return
        # Not sliced any more (this bucket's slicing was turned off, or the object shrank).
        await self._fetch(request, cache_key)

    async def _fetch(self, request: ProxyRequest, cache_key: CacheKey) -> None:
        """A miss: fetch once for every concurrent request of the key (or pass through)."""
        if request.method == b"HEAD" or request.conditions.range is not None:
            # A range of an object not known yet: a sliceable one is sliced from here on.
            sliced = self._sliced
            if (
                sliced is None
                or request.method != b"GET"
                or not await sliced.probe(request, cache_key)
            ):
                await self._pass_through(request, cache_key.key)
            return
        flight = self._flights.get(cache_key)
        if flight is not None:
            shared = await flight.wait()
            if shared is LOOK_AGAIN:
                again = await self._cache.get(cache_key)
                if again is not None and self._answer(request, again.entry, b"HIT"):
                    return
            elif (isinstance(shared, CacheEntry) and self._answer(request, shared, b"MISS")) or (
                isinstance(shared, SliceManifest)
                and self._sliced is not None
                and await self._sliced.serve(request, cache_key, shared)
            ):
                return
            await self._pass_through(request, cache_key.key)
            return
        await self._lead(request, cache_key)

    def _release(self, cache_key: CacheKey, flight: Flight, result: object) -> None:
        if self._flights.get(cache_key) is flight:
            del self._flights[cache_key]
        flight.settle(result)

    async def _lead(self, request: ProxyRequest, cache_key: CacheKey) -> None:
        flight = self._flights[cache_key] = Flight()
        try:
            response = await self._client.fetch(b"GET", cache_key.key, Headers(), request.timings)
            await self._fill(request, cache_key, response, flight)
        except HTTPError as e:
            self._release(cache_key, flight, e)  # S3's answer is the same for everyone
            raise
        finally:
            # Any other ending (the leader's client went away, nothing stored) leaves the
            # followers to fetch on their own.
            self._release(cache_key, flight, None)

    async def _fill(
        self,
        request: ProxyRequest | None,
        cache_key: CacheKey,
        response: IResponse,
        flight: Flight | None = None,
    ) -> None:
        """
        Serve a full upstream response (200 or an error) and store it when it fits, in four
        steps: admission (:meth:`_admit`), the client's head (:meth:`_start_answer`), the
        streamed body (:meth:`_relay`), the cache write (:meth:`_commit`).
        """
        if response.code >= 400:
            await raise_upstream_error(response, self._clock, self._timeouts.idle_seconds)
        now = self._clock.seconds()
        admission = self._admit(cache_key, response)
        headers = tuple(
            (name, value)
            for name in STORED_RESPONSE_HEADERS
            for value in (response.headers.getRawHeaders(name) or ())[:1]
        )
        if admission.sliced:
            await self._fill_slices(request, cache_key, response, headers, admission, flight)
            return
        if flight is not None and not admission.decoupled:
            self._release(cache_key, flight, None)
        client = request
        if request is not None:
            client = self._start_answer(request, response, headers, admission.plan.stores)
            if client is None and not admission.plan.stores:
                response.deliverBody(Discard())
                return
        if not admission.plan.stores:
            await self._relay(response, client, None, admission.decoupled)
            return
        fill = _Fill(admission.plan, self._policy.max_item_size)
        timings = request.timings if request is not None else None
        stage = None if timings is None else _fill_stage(timings, admission.plan)
        try:
            await self._relay(response, client, fill, admission.decoupled)
            entry = self._entry(headers, b"".join(fill.chunks), now, admission.fresh)
            await self._commit(cache_key, entry, admission.plan, fill, int(response.length), flight)
        except BaseException as e:
            if stage is not None:
                stage.end({"yatagarasu.cache.fill_bytes": fill.size}, error=e)
            raise
        if stage is not None:
            stage.end({"yatagarasu.cache.fill_bytes": fill.size})

    async def _fill_slices(
        self,
        request: ProxyRequest | None,
        cache_key: CacheKey,
        response: IResponse,
        headers: tuple[tuple[bytes, bytes], ...],
        admission: _Admission,
        flight: Flight | None,
    ) -> None:
        """
        Serve the full body of a sliceable object at the client's pace while it is cut into
        slices; the manifest is stored first, and concurrent requests are served from slices
        (fetching those not cut yet).
        """
        assert self._sliced is not None
        manifest = self._sliced.remember(cache_key, headers, int(response.length), admission.fresh)
        if flight is not None:
            self._release(cache_key, flight, manifest)
        client = request
        if request is not None:
            client = self._start_answer(request, response, headers, True)
        await self._relay(response, client, self._sliced.cutter(cache_key, manifest), False)

    def _admit(self, cache_key: CacheKey, response: IResponse) -> _Admission:
        """Decide from the headers alone (before any body byte) whether and where to store."""
        upstream = response.headers
        fresh = freshness(
            upstream.getRawHeaders(b"cache-control") or (),
            first_header(upstream, b"expires"),
            first_header(upstream, b"date"),
            self._policy.ttl,
        )
        length = response.length
        known = length is not UNKNOWN_LENGTH
        sliced = (
            self._sliced is not None
            and fresh.storable
            and known
            and self._sliced.sliceable(int(length))
            and first_header(upstream, b"etag") is not None
        )
        fits = known and not sliced and length <= self._policy.max_item_size
        plan = self._cache.plan(cache_key, int(length)) if fresh.storable and fits else WritePlan()
        decoupled = plan.stores and int(length) <= DECOUPLED_FILL_LIMIT
        return _Admission(fresh, plan, decoupled, sliced)

    def _start_answer(
        self,
        request: ProxyRequest,
        response: IResponse,
        headers: tuple[tuple[bytes, bytes], ...],
        stores: bool,
    ) -> ProxyRequest | None:
        """
        Start the client's answer: ``X-Cache``, then either its own 304/412 (its conditions
        hold against S3's validators) or the 200 head.

        :returns: the client to stream the body to, or ``None`` when it was answered from
            the headers (the cache may still want the body).
        """
        request.set_cache_status(b"MISS" if stores else b"BYPASS")
        upstream = response.headers
        etag, modified = first_header(upstream, b"etag"), first_header(upstream, b"last-modified")
        status = request.conditions.precondition_status(etag, modified)
        if status is not None:
            # Other clients never see this client's 304/412.
            if status == 412:
                write_error(request, precondition_failed(), request.request_id)
            else:
                self._answer_condition(request, status, headers)
            return None
        request.setResponseCode(200)
        for name, value in headers:
            request.responseHeaders.setRawHeaders(name, [value])
        if response.length is not UNKNOWN_LENGTH:
            request.setHeader(b"content-length", b"%d" % response.length)
        return request

    async def _relay(
        self,
        response: IResponse,
        client: ProxyRequest | None,
        fill: _Fill | SliceCutter | None,
        decoupled: bool,
    ) -> None:
        """Stream the body to the client (if any) while ``fill`` collects it for the cache."""
        relay = BodyRelay(client, self._clock, self._timeouts, fill, backpressure=not decoupled)
        response.deliverBody(relay)
        try:
            await relay.done
        except BaseException:
            if fill is not None:
                fill.abort()
            raise
        if client is not None and not client._disconnected:
            client.finish()

    def _entry(
        self,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes | FileBody | MappedBody,
        now: float,
        fresh: Freshness,
    ) -> CacheEntry:
        retain = max(fresh.ttl, self._policy.stale_if_error)
        return CacheEntry(
            headers=headers,
            body=body,
            stored_at=now,
            expires_at=now + fresh.ttl,
            retain_until=now + fresh.ttl + retain,
            revalidate=fresh.revalidate,
        )

    async def _commit(
        self,
        cache_key: CacheKey,
        entry: CacheEntry,
        plan: WritePlan,
        fill: _Fill,
        length: int,
        flight: Flight | None,
    ) -> None:
        """Commit the streamed writers and store the buffered body; release the followers."""
        commits = [writer.commit(entry) for writer in plan.writers]
        for commit in commits:
            commit.addErrback(self._commit_failed, cache_key)
        if plan.buffered and not fill.overflow and fill.size == length:
            self._cache.store_in(cache_key, entry, plan.buffered)
            if flight is not None:
                self._release(cache_key, flight, entry)
        elif commits and flight is not None:
            await DeferredList(commits, consumeErrors=True)
            self._release(cache_key, flight, LOOK_AGAIN)

    def _commit_failed(self, failure: Failure, cache_key: CacheKey) -> None:
        log.warn(
            "streamed cache write of {key} failed: {error}",
            key=cache_key.text,
            error=failure.getErrorMessage(),
        )

    async def _revalidate(self, request: ProxyRequest, cache_key: CacheKey, lookup: Lookup) -> None:
        entry = lookup.entry
        etag, modified = entry.header(b"etag"), entry.header(b"last-modified")
        # Through the same parser as clients' fields: only well-formed validators go to S3.
        conditions = Conditions(
            if_none_match=parse_entity_tags([etag] if etag is not None else None),
            if_modified_since=http_date(modified),
        )
        try:
            response = await fetch_object(
                self._client, b"GET", cache_key.key, conditions, request.timings
            )
        except UpstreamError:
            if self._stale_allowed(entry) and self._answer(request, entry, b"STALE"):
                return
            raise
        if response.code == 304:
            response.deliverBody(Discard())
            refreshed = self._refreshed(entry, response.headers)
            self._cache.refresh(cache_key, refreshed, lookup.layer)
            if self._answer(request, refreshed, b"REVALIDATED"):
                return
            await self._pass_through(request, cache_key.key)
            return
        if response.code in (403, 404, 410):
            await self._cache.delete(cache_key)
        await self._fill(request, cache_key, response)

    def _stale_allowed(self, entry: CacheEntry) -> bool:
        return self._clock.seconds() <= entry.expires_at + self._policy.stale_if_error

    def _refreshed(self, entry: CacheEntry, upstream: Headers) -> CacheEntry:
        now = self._clock.seconds()
        cache_control = upstream.getRawHeaders(b"cache-control") or (
            [v] if (v := entry.header(b"cache-control")) else []
        )
        fresh = freshness(
            cache_control,
            first_header(upstream, b"expires"),
            first_header(upstream, b"date"),
            self._policy.ttl,
        )
        updated = dict(entry.headers)
        for name in (b"cache-control", b"expires", b"etag", b"last-modified"):
            value = first_header(upstream, name)
            if value is not None:
                updated[name] = value
        return self._entry(tuple(updated.items()), entry.body, now, fresh)

    async def _pass_through(self, request: ProxyRequest, key: str) -> None:
        """Fetch with the client's range/conditionals, stream, store nothing (``BYPASS``)."""
        response = await fetch_object(
            self._client, request.method, key, request.conditions, request.timings
        )
        request.set_cache_status(b"BYPASS" if request.method == b"GET" else b"MISS")
        await relay_response(request, response, self._clock, self._timeouts)

    def _answer_condition(
        self, request: ProxyRequest, status: int, headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        if status == 412:
            raise precondition_failed()
        request.setResponseCode(304)
        for name, value in headers:
            if name in (b"etag", b"last-modified", b"cache-control", b"expires"):
                request.responseHeaders.setRawHeaders(name, [value])
        request.finish()

    def _answer(self, request: ProxyRequest, entry: CacheEntry, label: bytes) -> bool:
        """
        Serve a cached entry (conditionals, range, HEAD).

        :returns: ``False`` when its body file is gone (evicted meanwhile): then nothing was
            written and the caller falls back to S3.
        """
        body_file: IO[bytes] | None = None
        if isinstance(entry.body, FileBody):
            try:
                body_file = open(entry.body.path, "rb")  # noqa: SIM115 (closed by the producer)
            except OSError:
                return False
        try:
            self._write_entry(request, entry, label, body_file)
        except BaseException:
            if body_file is not None:
                body_file.close()
            raise
        return True

    def _write_entry(
        self, request: ProxyRequest, entry: CacheEntry, label: bytes, body_file: IO[bytes] | None
    ) -> None:
        request.set_cache_status(label)
        total = entry.length
        wanted = None
        conditions = request.conditions
        if conditions is not NO_CONDITIONS:
            etag, modified = entry.header(b"etag"), entry.header(b"last-modified")
            status = conditions.precondition_status(etag, modified)
            if status is not None:
                if body_file is not None:
                    body_file.close()
                self._answer_condition(request, status, entry.headers)
                return
            try:
                wanted = conditions.range_for(total, etag, modified)
            except Unsatisfiable:
                raise range_not_satisfiable(total) from None
        age = max(0, int(self._clock.seconds() - entry.stored_at))
        lines = entry.head_lines
        if entry.header(b"accept-ranges") is None:
            lines += b"Accept-Ranges: bytes\r\n"
        if wanted is None:
            code, offset, size = 200, 0, total
        else:
            code, offset, size = 206, wanted.first, wanted.length
            lines += b"Content-Range: %s\r\n" % wanted.content_range
        request.write_head(code, b"%sAge: %d\r\nContent-Length: %d\r\n" % (lines, age, size))
        if request.method == b"HEAD":
            if body_file is not None:
                body_file.close()
            request.finish()
            return
        if body_file is not None:
            assert isinstance(entry.body, FileBody)
            start = entry.body.offset + offset
            send = self._timeouts.send_seconds
            FileRangeProducer(request, body_file, start, size, self._clock, send).start()
            return
        body = entry.body
        if isinstance(body, MappedBody):  # 64 KiB or more, and a range is never empty
            request.write_body_file(body, offset, size)
        else:
            assert isinstance(body, bytes)
            request.write(body if wanted is None else body[offset : offset + size])
        request.finish()


def _lookup_ended(lookup: Lookup | None, stage: Phase, timings: RequestTimings) -> Lookup | None:
    """End the lookup stage with what it found; a hit's body is available from now."""
    if lookup is None:
        stage.end({"yatagarasu.cache.hit": False})
    else:
        timings.body_from = stage.end(
            {"yatagarasu.cache.hit": True, "yatagarasu.cache.layer": lookup.layer}
        )
    return lookup


def _fill_stage(timings: RequestTimings, plan: WritePlan) -> Phase:
    """The cache fill (body streamed into the layers, then committed) as a measured stage."""
    attributes: dict[str, str | int] = {
        "yatagarasu.cache.buffered_layers": ",".join(layer.name for layer in plan.buffered),
        "yatagarasu.cache.streamed_writers": len(plan.writers),
    }
    return timings.begin(None, "cache.fill", attributes=attributes)


async def raise_upstream_error(response: IResponse, clock: IReactorTime, timeout: float) -> None:
    """Turn an S3 4xx answer into our JSON error (with ``s3_code``)."""
    raise await upstream_error(response, clock, timeout)

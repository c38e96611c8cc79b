"""
The resource that serves one bucket prefix: CORS, method gate, key decoding, IP filter,
authentication, then the cache or the upstream request and the streamed answer — or, for a
directory (a path ending in ``/``, or the bucket's top), its index document, its listing or
the bucket's ``not_found_document``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from yatagarasu.auth.network import IpFilter
from yatagarasu.config.schema import BucketConfig
from yatagarasu.errors import Forbidden, HTTPError
from yatagarasu.http.conditionals import NO_CONDITIONS
from yatagarasu.http.methods import BUCKET_METHODS, READ_METHODS
from yatagarasu.interfaces import IAuthScheme, IImmediateAuthScheme
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import Identity
from yatagarasu.web.async_resource import AsyncResource
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.cors import CorsPolicy
from yatagarasu.web.listing import DirectoryListing
from yatagarasu.web.site import ProxyRequest
from yatagarasu.web.streaming import StreamTimeouts
from yatagarasu.web.upstream import fetch_object, relay_response


class BucketResource(AsyncResource):
    """
    Serve objects of one S3 bucket under one URL prefix.

    :param bucket: the bucket's configuration.
    :param client: the upstreams of that bucket (replicas behind circuit breakers).
    :param clock: time source.
    :param timeouts: how long S3 and clients may stall while streaming.
    :param ip_filter: the bucket's client address filter, if any.
    :param scheme: the bucket's auth scheme (``None``: a public bucket).
    :param cached: the bucket's cache side (``None``: the bucket does not cache).
    :param listing: the bucket's directory listings (``None``: ``listing.enabled`` is off).
    """

    def __init__(
        self,
        bucket: BucketConfig,
        client: ReplicaSet,
        clock: IReactorTime,
        timeouts: StreamTimeouts,
        *,
        ip_filter: IpFilter | None = None,
        scheme: IAuthScheme | None = None,
        cached: CachedObjects | None = None,
        listing: DirectoryListing | None = None,
    ) -> None:
        super().__init__()
        self._bucket = bucket
        self._client = client
        self._clock = clock
        self._timeouts = timeouts
        self._ip_filter = ip_filter
        self._scheme = scheme
        self._immediate = scheme if IImmediateAuthScheme.providedBy(scheme) else None
        self._cached = cached
        self._cors = CorsPolicy(bucket.cors) if bucket.cors is not None else None
        self._listing = listing

    def handle(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        The bucket's part of the request pipeline (DESIGN.md §2, steps 5-10), in order:
        CORS headers, method gate, object key, IP filter, authentication, then the cache or
        the upstream relay. Each step either passes or raises ``HTTPError``.

        Not one coroutine: a memory hit is answered within this call, with no Deferred at all
        (see :meth:`CachedObjects.serve`) — on a bucket with auth too, when the scheme knows
        the credentials at once (:class:`IImmediateAuthScheme`, a JWT verified before).

        :returns: ``None`` when answered already, else a Deferred that fires when done.
        :raises HTTPError: when the request is refused before anything was sent.
        """
        request.bucket = self._bucket.name
        method = request.method
        if self._cors is not None and method != b"OPTIONS":
            self._cors.decorate(request)
        if method == b"OPTIONS":
            self._preflight(request)
            return None
        if method not in READ_METHODS:
            raise HTTPError(
                405,
                f"method {method.decode('ascii', 'replace')} is not allowed (read-only proxy)",
                headers=[("Allow", BUCKET_METHODS.decode())],
            )
        key = request.object_key = self._object_key(request)
        if self._ip_filter is not None and not self._ip_filter.allows(request.client_address):
            raise Forbidden("client address not allowed for this bucket")
        if self._scheme is not None:
            identity = self._immediate.authenticate_now(request) if self._immediate else None
            if identity is None:
                authenticating = self._scheme.authenticate(request)
                return authenticating.addCallback(self._authenticated, request, key)
            request.subject = identity.subject
        return self._respond(request, key)

    def _preflight(self, request: ProxyRequest) -> None:
        request.setHeader(b"allow", BUCKET_METHODS)
        if self._cors is not None and request.getHeader(b"origin") is not None:
            refused = self._cors.preflight(request)
            if refused is not None:
                raise HTTPError(403, f"CORS preflight refused: {refused}")
        request.setResponseCode(204)
        request.finish()

    def _object_key(self, request: ProxyRequest) -> str:
        try:
            key = b"/".join(request.postpath or ()).decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "object key is not valid UTF-8") from None
        return key

    def _authenticated(
        self, identity: Identity, request: ProxyRequest, key: str
    ) -> Deferred[None] | None:
        request.subject = identity.subject
        return self._respond(request, key)

    def _respond(self, request: ProxyRequest, key: str) -> Deferred[None] | None:
        if not key or key.endswith("/"):
            return Deferred.fromCoroutine(self._directory(request, key))
        if self._bucket.not_found_document is None:
            return self._object(request, key)
        return Deferred.fromCoroutine(self._object_or_fallback(request, key))

    def _object(self, request: ProxyRequest, key: str) -> Deferred[None] | None:
        if self._cached is not None:
            return self._cached.serve(request, key)
        return Deferred.fromCoroutine(self._relay(request, key))

    async def _object_or_fallback(self, request: ProxyRequest, key: str) -> None:
        try:
            await _answered(self._object(request, key))
        except HTTPError as e:
            if not _missing(e, request):
                raise
            await self._not_found(request, e)

    async def _directory(self, request: ProxyRequest, prefix: str) -> None:
        """
        A directory, in this order: ``prefix + index_document`` when S3 has it, else the
        listing (``listing.enabled``), else the ``not_found_document``, else 404.
        """
        bucket = self._bucket
        missing = HTTPError(404, "no object key in path (listing is not enabled for this bucket)")
        if bucket.index_document is not None:
            try:
                await _answered(self._object(request, prefix + bucket.index_document))
                return
            except HTTPError as e:
                if not _missing(e, request):
                    raise
                missing = e
        if self._listing is not None:
            try:
                await self._listing.serve(request, prefix)
                return
            except HTTPError as e:
                if not _missing(e, request):
                    raise
                missing = e
        await self._not_found(request, missing)

    async def _not_found(self, request: ProxyRequest, missing: HTTPError) -> None:
        """
        Serve the ``not_found_document`` with ``not_found_status`` for a path S3 has nothing
        for (``missing``, raised again when there is no such document either).
        """
        bucket = self._bucket
        document = bucket.not_found_document
        if document is None:
            raise missing
        try:
            if bucket.not_found_status == 200:
                await _answered(self._object(request, document))
                return
            # A 404 is not cached, has no conditions and no range: the whole document.
            response = await fetch_object(self._client, request.method, document, NO_CONDITIONS)
            if self._cached is not None:
                request.set_cache_status(b"BYPASS")
            await relay_response(request, response, self._clock, self._timeouts, status=404)
        except HTTPError as e:
            if not _missing(e, request):
                raise
            raise missing from None

    async def _relay(self, request: ProxyRequest, key: str) -> None:
        response = await fetch_object(self._client, request.method, key, request.conditions)
        await relay_response(request, response, self._clock, self._timeouts)


async def _answered(answering: Deferred[None] | None) -> None:
    if answering is not None:
        await answering


def _missing(error: HTTPError, request: ProxyRequest) -> bool:
    """Whether ``error`` says S3 has no such object, and nothing was sent yet."""
    return error.status == 404 and not request.startedWriting

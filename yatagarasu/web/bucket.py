"""
The resource that serves one bucket prefix: CORS, method gate, key decoding, IP filter, rate
limits, authentication (then the per-user rate limit), authorization, then the cache or the
upstream request and the streamed answer — or, for a directory (a path ending in ``/``, or the
bucket's top), its index document, its listing or the bucket's ``not_found_document``.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from yatagarasu.auth.network import IpFilter
from yatagarasu.config.schema import BucketConfig
from yatagarasu.errors import AuthenticationRequired, Forbidden, HTTPError, InvalidCredentials
from yatagarasu.http.conditionals import NO_CONDITIONS
from yatagarasu.http.methods import BUCKET_METHODS, READ_METHODS
from yatagarasu.interfaces import (
    IAuthorizer,
    IAuthScheme,
    IImmediateAuthorizer,
    IImmediateAuthScheme,
)
from yatagarasu.metrics import Metrics
from yatagarasu.observability.timings import AUTH, Phase, RequestTimings
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import AuthorizationQuery, Decision, Identity
from yatagarasu.web.async_resource import AsyncResource
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.cors import CorsPolicy
from yatagarasu.web.listing import DirectoryListing
from yatagarasu.web.rate_limits import BucketRateLimits
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
    :param rate_limits: the bucket's rate limits (``None``: none applies).
    :param authorizer: asked after authentication (``None``: authentication decides alone).
    :param metrics: where authorization decisions are counted (with ``authorizer``).
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
        rate_limits: BucketRateLimits | None = None,
        authorizer: IAuthorizer | None = None,
        metrics: Metrics | None = None,
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
        self._rate_limits = rate_limits
        self._authorizer = authorizer
        self._immediate_authorizer = (
            authorizer if IImmediateAuthorizer.providedBy(authorizer) else None
        )
        self._metrics = metrics
        self._cors = CorsPolicy(bucket.cors) if bucket.cors is not None else None
        self._listing = listing

    def handle(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        The bucket's part of the request pipeline (DESIGN.md §2, steps 5-10), in order:
        CORS headers, method gate, object key, IP filter, rate limits (``per_ip``, ``bucket``,
        ``global``), authentication, the ``per_user`` rate limit, authorization, then the cache
        or the upstream relay. Each step either passes or raises ``HTTPError``.

        Not one coroutine: a memory hit is answered within this call, with no Deferred at all
        (see :meth:`CachedObjects.serve`) — on a bucket with auth too, when the scheme knows
        the credentials at once (:class:`IImmediateAuthScheme`, a JWT verified before), and
        with rate limits kept in memory (a local limiter answers at once).

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
        if self._rate_limits is not None:
            limiting = self._rate_limits.before_auth(request)
            if limiting is not None:
                return limiting.addCallback(lambda _: self._authenticate(request, key))
        return self._authenticate(request, key)

    def _authenticate(self, request: ProxyRequest, key: str) -> Deferred[None] | None:
        identity = None
        if self._scheme is not None:
            stage = None if request.timings is None else self._auth_stage(request.timings)
            try:
                identity = self._immediate.authenticate_now(request) if self._immediate else None
            except Exception as e:
                request.auth_result = _auth_failure(e)
                if stage is not None:
                    stage.end(error=e)
                raise
            if identity is None:
                authenticating = self._scheme.authenticate(request)
                if stage is not None:
                    authenticating.addBoth(stage.settle)
                authenticating.addErrback(self._not_authenticated, request)
                return authenticating.addCallback(self._authenticated, request, key)
            if stage is not None:
                stage.end()
            request.subject = identity.subject
            request.auth_result = "ok"
            if self._rate_limits is not None:
                limiting = self._rate_limits.after_auth(request)
                if limiting is not None:
                    return limiting.addCallback(
                        lambda _: self._authorize_then_respond(request, key, identity)
                    )
        return self._authorize_then_respond(request, key, identity)

    def _auth_stage(self, timings: RequestTimings) -> Phase:
        """Authentication as one measured stage (its own span)."""
        schemes = ",".join(self._bucket.auth.scheme_names)
        return timings.begin(AUTH, "auth", attributes={"yatagarasu.auth.scheme": schemes})

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
        request.auth_result = "ok"
        if self._rate_limits is not None:
            limiting = self._rate_limits.after_auth(request)
            if limiting is not None:
                return limiting.addCallback(
                    lambda _: self._authorize_then_respond(request, key, identity)
                )
        return self._authorize_then_respond(request, key, identity)

    def _authorize_then_respond(
        self, request: ProxyRequest, key: str, identity: Identity | None
    ) -> Deferred[None] | None:
        if self._authorizer is not None:
            return self._authorize(self._authorizer, request, key, identity)
        return self._respond(request, key)
        return self._respond(request, key)

    def _authorize(
        self, authorizer: IAuthorizer, request: ProxyRequest, key: str, identity: Identity | None
    ) -> Deferred[None] | None:
        method = request.method.decode("ascii")
        query = AuthorizationQuery(self._bucket.name, key, method, request.client_address, identity)
        if self._immediate_authorizer is not None:
            decision = self._immediate_authorizer.authorize_now(query)
            if decision is not None:
                return self._decided(decision, authorizer.name, request, key)
        deciding: Deferred[Decision] = authorizer.authorize(query)
        return deciding.addCallback(self._decided, authorizer.name, request, key)

    def _decided(
        self, decision: Decision, authorizer: str, request: ProxyRequest, key: str
    ) -> Deferred[None] | None:
        if self._metrics is not None:
            self._metrics.authorization(self._bucket.name, authorizer, decision)
        if decision.allowed:
            return self._respond(request, key)
        if decision.result == "error":  # fail mode closed: refused, but not as a denial
            raise HTTPError(
                503,
                f"authorization service unavailable ({authorizer})",
                headers=[("Retry-After", "1")],
            )
        raise Forbidden(decision.reason or f"denied by {authorizer}")

    @staticmethod
    def _not_authenticated(failure: Failure, request: ProxyRequest) -> Failure:
        request.auth_result = _auth_failure(failure.value)
        return failure

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
        response = await fetch_object(
            self._client, request.method, key, request.conditions, request.timings
        )
        await relay_response(request, response, self._clock, self._timeouts)


def _auth_failure(error: BaseException | None) -> str | None:
    """
    :returns: the ``yatagarasu_auth_results`` result of an authentication that failed
        (``None``: not counted, the client went away).
    """
    if isinstance(error, CancelledError):
        return None
    if isinstance(error, AuthenticationRequired):
        return "missing"
    if isinstance(error, InvalidCredentials):
        return "invalid"
    if isinstance(error, Forbidden):
        return "forbidden"
    return "error"


async def _answered(answering: Deferred[None] | None) -> None:
    if answering is not None:
        await answering


def _missing(error: HTTPError, request: ProxyRequest) -> bool:
    """Whether ``error`` says S3 has no such object, and nothing was sent yet."""
    return error.status == 404 and not request.startedWriting

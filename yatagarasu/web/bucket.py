"""
The resource that serves one bucket prefix: CORS, method gate, key decoding, IP filter, rate
limits, authentication (then the per-user rate limit), then the cache or the upstream request
and the streamed answer.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from yatagarasu.auth.network import IpFilter
from yatagarasu.config.schema import BucketConfig
from yatagarasu.errors import Forbidden, HTTPError
from yatagarasu.http.methods import BUCKET_METHODS, READ_METHODS
from yatagarasu.interfaces import IAuthScheme, IImmediateAuthScheme
from yatagarasu.s3.client import S3Client
from yatagarasu.values import Identity
from yatagarasu.web.async_resource import AsyncResource
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.cors import CorsPolicy
from yatagarasu.web.rate_limits import BucketRateLimits
from yatagarasu.web.site import ProxyRequest
from yatagarasu.web.streaming import StreamTimeouts
from yatagarasu.web.upstream import fetch_object, relay_response


class BucketResource(AsyncResource):
    """
    Serve objects of one S3 bucket under one URL prefix.

    :param bucket: the bucket's configuration.
    :param client: the S3 client of that bucket.
    :param clock: time source.
    :param timeouts: how long S3 and clients may stall while streaming.
    :param ip_filter: the bucket's client address filter, if any.
    :param scheme: the bucket's auth scheme (``None``: a public bucket).
    :param cached: the bucket's cache side (``None``: the bucket does not cache).
    :param rate_limits: the bucket's rate limits (``None``: none applies).
    """

    def __init__(
        self,
        bucket: BucketConfig,
        client: S3Client,
        clock: IReactorTime,
        timeouts: StreamTimeouts,
        *,
        ip_filter: IpFilter | None = None,
        scheme: IAuthScheme | None = None,
        cached: CachedObjects | None = None,
        rate_limits: BucketRateLimits | None = None,
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
        self._cors = CorsPolicy(bucket.cors) if bucket.cors is not None else None

    def handle(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        The bucket's part of the request pipeline (DESIGN.md §2, steps 5-10), in order:
        CORS headers, method gate, object key, IP filter, rate limits (``per_ip``, ``bucket``,
        ``global``), authentication, the ``per_user`` rate limit, then the cache or the
        upstream relay. Each step either passes or raises ``HTTPError``.

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
        if self._scheme is not None:
            identity = self._immediate.authenticate_now(request) if self._immediate else None
            if identity is None:
                authenticating = self._scheme.authenticate(request)
                return authenticating.addCallback(self._authenticated, request, key)
            request.subject = identity.subject
            if self._rate_limits is not None:
                limiting = self._rate_limits.after_auth(request)
                if limiting is not None:
                    return limiting.addCallback(lambda _: self._respond(request, key))
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
        if not key:
            raise HTTPError(404, "no object key in path (listing is not supported)")
        return key

    def _authenticated(
        self, identity: Identity, request: ProxyRequest, key: str
    ) -> Deferred[None] | None:
        request.subject = identity.subject
        if self._rate_limits is not None:
            limiting = self._rate_limits.after_auth(request)
            if limiting is not None:
                return limiting.addCallback(lambda _: self._respond(request, key))
        return self._respond(request, key)

    def _respond(self, request: ProxyRequest, key: str) -> Deferred[None] | None:
        if self._cached is not None:
            return self._cached.serve(request, key)
        return Deferred.fromCoroutine(self._relay(request, key))

    async def _relay(self, request: ProxyRequest, key: str) -> None:
        response = await fetch_object(self._client, request.method, key, request.conditions)
        await relay_response(request, response, self._clock, self._timeouts)

"""
The resource that serves one bucket prefix: CORS, method gate, key decoding, IP filter,
authentication, authorization, then the cache or the upstream request and the streamed answer.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from yatagarasu.auth.network import IpFilter
from yatagarasu.config.schema import BucketConfig
from yatagarasu.errors import AuthenticationRequired, Forbidden, HTTPError, InvalidCredentials
from yatagarasu.http.methods import BUCKET_METHODS, READ_METHODS
from yatagarasu.interfaces import (
    IAuthorizer,
    IAuthScheme,
    IImmediateAuthorizer,
    IImmediateAuthScheme,
)
from yatagarasu.metrics import Metrics
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.values import AuthorizationQuery, Decision, Identity
from yatagarasu.web.async_resource import AsyncResource
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.cors import CorsPolicy
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
    :param authorizer: asked after authentication (``None``: authentication decides alone).
    :param metrics: where authorization decisions are counted (with ``authorizer``).
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
        authorizer: IAuthorizer | None = None,
        metrics: Metrics | None = None,
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
        self._authorizer = authorizer
        self._immediate_authorizer = (
            authorizer if IImmediateAuthorizer.providedBy(authorizer) else None
        )
        self._metrics = metrics
        self._cors = CorsPolicy(bucket.cors) if bucket.cors is not None else None

    def handle(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        The bucket's part of the request pipeline (DESIGN.md §2, steps 5-10), in order:
        CORS headers, method gate, object key, IP filter, authentication, authorization, then
        the cache or the upstream relay. Each step either passes or raises ``HTTPError``.

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
        identity = None
        if self._scheme is not None:
            try:
                identity = self._immediate.authenticate_now(request) if self._immediate else None
            except Exception as e:
                request.auth_result = _auth_failure(e)
                raise
            if identity is None:
                authenticating = self._scheme.authenticate(request)
                authenticating.addErrback(self._not_authenticated, request)
                return authenticating.addCallback(self._authenticated, request, key)
            request.subject = identity.subject
            request.auth_result = "ok"
        if self._authorizer is not None:
            return self._authorize(self._authorizer, request, key, identity)
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
        request.auth_result = "ok"
        if self._authorizer is not None:
            return self._authorize(self._authorizer, request, key, identity)
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
        if self._cached is not None:
            return self._cached.serve(request, key)
        return Deferred.fromCoroutine(self._relay(request, key))

    async def _relay(self, request: ProxyRequest, key: str) -> None:
        response = await fetch_object(self._client, request.method, key, request.conditions)
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

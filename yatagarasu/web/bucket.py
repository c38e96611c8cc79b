"""
The resource that serves one bucket prefix: method gate, CORS, key decoding, the upstream
request and the streamed answer.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from yatagarasu.auth.identity import Forbidden, Identity
from yatagarasu.auth.network import IpFilter
from yatagarasu.config.schema import BucketConfig
from yatagarasu.errors import HTTPError
from yatagarasu.interfaces import IAuthScheme, IImmediateAuthScheme
from yatagarasu.s3.client import S3Client
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.cors import CorsPolicy
from yatagarasu.web.responses import write_error
from yatagarasu.web.site import ProxyRequest
from yatagarasu.web.streaming import BodyStalled, ClientStalled, StreamTimeouts
from yatagarasu.web.upstream import fetch_object, relay_response

log = Logger()

ALLOWED_METHODS = b"GET, HEAD, OPTIONS"


class BucketResource(Resource):
    """
    Serve objects of one S3 bucket under one URL prefix.

    :param bucket: the bucket's configuration.
    :param client: the S3 client of that bucket.
    :param clock: time source.
    :param timeouts: how long S3 and clients may stall while streaming.
    :param ip_filter: the bucket's client address filter, if any.
    :param scheme: the bucket's auth scheme (``None``: a public bucket).
    :param cached: the bucket's cache side (``None``: the bucket does not cache).
    """

    isLeaf = True

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

    def render(self, request: Request) -> Any:
        proxy_request: ProxyRequest = request  # type: ignore[assignment]
        proxy_request.bucket = self._bucket.name
        method = request.method
        if self._cors is not None and method != b"OPTIONS":
            self._cors.decorate(request)
        if method == b"GET" or method == b"HEAD":
            # Not via Resource.render: twisted.web's HEAD-via-GET fallback does not work with
            # NOT_DONE_YET, and the lookup of render_<METHOD> is a cost on every hit.
            return self._serve(proxy_request)
        if method == b"OPTIONS":
            return self.render_OPTIONS(request)
        error = HTTPError(
            405,
            f"method {method.decode('ascii', 'replace')} is not allowed (read-only proxy)",
            headers=[("Allow", ALLOWED_METHODS.decode())],
        )
        write_error(request, error, proxy_request.request_id)
        return NOT_DONE_YET

    def render_OPTIONS(self, request: Request) -> int:
        proxy_request = cast(ProxyRequest, request)
        request.setHeader(b"allow", ALLOWED_METHODS)
        if self._cors is not None and request.getHeader(b"origin") is not None:
            refused = self._cors.preflight(request)
            if refused is not None:
                write_error(
                    request,
                    HTTPError(403, f"CORS preflight refused: {refused}"),
                    proxy_request.request_id,
                )
                return NOT_DONE_YET
        request.setResponseCode(204)
        request.finish()
        return NOT_DONE_YET

    def _serve(self, request: ProxyRequest) -> int:
        try:
            handling = self._handle(request)
        except Exception:
            self._failed(Failure(), request)
            return NOT_DONE_YET
        if handling is not None:  # (None: answered already, a memory hit)
            if not request.finished:
                request.notifyFinish().addErrback(lambda _: handling.cancel())
            handling.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: ProxyRequest) -> None:
        try:
            self._answer_failure(failure, request)
        finally:
            # Drop the traceback frames: they would keep the request in a reference cycle.
            failure.cleanFailure()

    def _answer_failure(self, failure: Failure, request: ProxyRequest) -> None:
        if request.finished or request._disconnected:
            if not failure.check(CancelledError, BodyStalled, ClientStalled):
                log.failure("after the client went away", failure, request_id=request.request_id)
            return
        if request.startedWriting:
            # Headers (and maybe part of the body) are out: the only honest signal left is to
            # cut the connection, so the client never takes a truncated body for a whole one.
            log.warn(
                "aborting response of {bucket}/{key}: {reason}",
                bucket=self._bucket.name,
                key=request.object_key,
                reason=failure.getErrorMessage(),
                request_id=request.request_id,
            )
            transport: Any = request.channel.transport
            transport.abortConnection()
            return
        if failure.check(HTTPError):
            error = cast(HTTPError, failure.value)
        elif failure.check(BodyStalled):
            error = HTTPError(504, failure.getErrorMessage())
        elif failure.check(ResponseFailed, ConnectionLost, ConnectionDone):
            error = HTTPError(502, "S3 closed the connection before sending the body")
        else:
            log.failure("unexpected error", failure, request_id=request.request_id)
            error = HTTPError(500, "internal error")
        write_error(request, error, request.request_id)

    def _object_key(self, request: ProxyRequest) -> str:
        try:
            key = b"/".join(request.postpath or ()).decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "object key is not valid UTF-8") from None
        if not key:
            raise HTTPError(404, "no object key in path (listing is not supported)")
        return key

    def _handle(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        Answer a GET or HEAD.

        Not one coroutine: a memory hit is answered within this call, with no Deferred at all
        (see :meth:`CachedObjects.serve`) — on a bucket with auth too, when the scheme knows
        the credentials at once (:class:`IImmediateAuthScheme`, a JWT verified before).

        :returns: ``None`` when answered already, else a Deferred that fires when done.
        :raises HTTPError: when the request is refused before anything was sent.
        """
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

    def _authenticated(
        self, identity: Identity, request: ProxyRequest, key: str
    ) -> Deferred[None] | None:
        request.subject = identity.subject
        return self._respond(request, key)

    def _respond(self, request: ProxyRequest, key: str) -> Deferred[None] | None:
        if self._cached is not None:
            return self._cached.serve(request, key)
        return Deferred.fromCoroutine(self._relay(request, key))

    async def _relay(self, request: ProxyRequest, key: str) -> None:
        response = await fetch_object(self._client, request.method, key, request.conditions)
        await relay_response(request, response, self._clock, self._timeouts)

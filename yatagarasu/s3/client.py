"""
The upstream S3 client: one signed GET/HEAD attempt with timeouts, on one connection pool, and
a single signed PUT of a small object (the ``s3`` audit sink's batches).

Requests go through :class:`yatagarasu.s3.pool.PooledAgent`: persistent connections per
upstream (:class:`yatagarasu.s3.pool.ConnectionPool`), responses parsed in C
(:mod:`yatagarasu.s3.connection`), without twisted.web's per-request ``Agent`` machinery.
HTTPS endpoints are verified with service-identity (``BrowserLikePolicyForHTTPS``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from yatagarasu import __version__
from yatagarasu.config.schema import S3Config
from yatagarasu.errors import UpstreamError
from yatagarasu.http.outgoing import BytesBody
from yatagarasu.interfaces import ICredentialProvider
from yatagarasu.observability.timings import Phase, RequestTimings
from yatagarasu.s3.credentials import own_keys
from yatagarasu.s3.errors import read_s3_error
from yatagarasu.s3.listing import list_query
from yatagarasu.s3.pool import ConnectionPool, PooledAgent, s3_endpoint
from yatagarasu.s3.sigv4 import EMPTY_PAYLOAD_SHA256, Credentials, SigV4Signer, encode_key

_USER_AGENT = f"yatagarasu/{__version__}".encode()

#: told of every attempt: its outcome (``2xx``..``5xx``, ``timeout``, ``error``, ``cancelled``)
#: and the seconds from sending it to its response headers or its failure
AttemptObserver = Callable[[str, float], None]
_CLASSES = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class S3Client:
    """
    Fetch objects of one S3 bucket.

    :param reactor: provides time and TCP/TLS connections.
    :param config: the ``s3`` section of the bucket, or of one of its replicas
        (:meth:`S3Config.upstreams`).
    :param agent: the HTTP agent (default: a :class:`PooledAgent` keeping up to
        ``connection_pool_size`` idle connections).
    :param observe: told of every attempt (the metrics); default: nobody.
    :param credentials: what signs each request (asked per request); default: the
        section's ``access_key``/``secret_key``/``session_token``, unsigned without them.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: S3Config,
        *,
        agent: IAgent | None = None,
        observe: AttemptObserver | None = None,
        credentials: ICredentialProvider | None = None,
    ) -> None:
        self._clock = reactor
        self._observe = observe
        self._config = config
        self._pool: ConnectionPool | None = None
        if config.endpoint:
            parts = urlsplit(config.endpoint)
            self._scheme = parts.scheme
            self._host = parts.netloc
            self._path_prefix = "/" + config.bucket + "/"
        else:
            # AWS: virtual-hosted style, unless the bucket name cannot be a TLS host label.
            self._scheme = "https"
            if "." in config.bucket:
                self._host = f"s3.{config.region}.amazonaws.com"
                self._path_prefix = "/" + config.bucket + "/"
            else:
                self._host = f"{config.bucket}.s3.{config.region}.amazonaws.com"
                self._path_prefix = "/"
        self._base = f"{self._scheme}://{self._host}".encode("ascii")
        #: the upstream's origin (``http://127.0.0.1:9000``), shown by ``/ready``
        self.origin = self._base.decode("ascii")
        where = urlsplit(self.origin)
        #: the attributes every attempt's span starts with
        self._span_attributes: dict[str, str | int] = {
            "server.address": where.hostname or self._host,
            "server.port": where.port or (443 if self._scheme == "https" else 80),
            "aws.s3.bucket": config.bucket,
        }
        if agent is None:
            endpoint = s3_endpoint(reactor, self._scheme, self._host, config.connect_seconds)
            self._pool = ConnectionPool(reactor, endpoint, config.connection_pool_size)
            agent = PooledAgent(self._base, self._pool)
        self._agent = agent
        self._credentials = credentials if credentials is not None else own_keys(config)
        # one signer (its derived key cached per date) for the credentials of the moment
        self._signing: tuple[Credentials | None, SigV4Signer | None] = (None, None)

    @property
    def idle_seconds(self) -> float:
        """Seconds a response body may stall while the client keeps up."""
        return self._config.idle_seconds

    def object_path(self, key: str) -> str:
        """
        The request path for an object key, exactly as sent (and signed).

        :param key: the object key (decoded).
        :returns: ``/bucket/encoded-key`` (path style) or ``/encoded-key`` (virtual host).
        """
        return self._path_prefix + encode_key(key)

    async def attempt(
        self,
        method: bytes,
        key: str,
        headers: Headers,
        timings: RequestTimings | None = None,
        number: int = 1,
    ) -> IResponse:
        """
        Send one signed request for an object (retries and failover are the replica set's,
        :class:`yatagarasu.s3.replicas.ReplicaSet`).

        :param method: ``b"GET"`` or ``b"HEAD"``.
        :param key: the object key.
        :param headers: client headers to pass on (range, conditionals); not modified.
        :param timings: the client request's timing record, when measured: the attempt is a
            client span whose ``traceparent`` goes to S3.
        :param number: which attempt of the client request this is (1: the first), for the span.
        :returns: the upstream response below 500, body not yet read.
        :raises UpstreamError: for a connect error, a timeout or a 5xx answer (502, 503
            SlowDown or 504; ``retryable``).
        :raises CancelledError: when the caller cancelled (our client went away).
        """
        path = self.object_path(key)
        url = self._base + path.encode("ascii")
        span = None if timings is None else self._attempt_span(timings, method, url, number)
        try:
            response = await self._observed_attempt(method, url, path, headers, span)
        except BaseException as e:
            if span is not None:
                span.end(error=e)
            raise
        if response.code >= 500:
            failure = await self._server_error(response)
            if span is not None:
                span.end(
                    {
                        "http.response.status_code": response.code,
                        "yatagarasu.s3.error": str(failure),
                    },
                    error=str(response.code),
                )
            raise failure
        if span is not None:
            span.end({"http.response.status_code": response.code})
        return response

    async def list_attempt(self, prefix: str, max_keys: int, token: str | None) -> IResponse:
        """
        Send one signed ListObjectsV2 request (delimiter ``/``) for the bucket.

        :param prefix: the key prefix to list.
        :param max_keys: keys per page (1-1000).
        :param token: S3's continuation token of the previous page, or ``None``.
        :returns: the upstream response below 500, body not yet read (see
            :func:`yatagarasu.s3.listing.read_list_page`).
        :raises UpstreamError: as :meth:`attempt`.
        :raises CancelledError: when the caller cancelled (our client went away).
        """
        path = self._path_prefix
        query = list_query(prefix, max_keys, token)
        url = self._base + f"{path}?{query}".encode("ascii")
        response = await self._observed_attempt(b"GET", url, path, Headers(), None, query=query)
        if response.code >= 500:
            raise await self._server_error(response)
        return response

    async def _observed_attempt(
        self,
        method: bytes,
        url: bytes,
        path: str,
        headers: Headers,
        span: Phase | None,
        *,
        query: str = "",
    ) -> IResponse:
        observe = self._observe
        if observe is None:
            return await self._attempt(method, url, path, headers, span, query=query)
        started = self._clock.seconds()
        outcome = "error"
        try:
            response = await self._attempt(method, url, path, headers, span, query=query)
            outcome = _CLASSES.get(response.code // 100, "error")
            return response
        except UpstreamError as e:
            outcome = "timeout" if e.status == 504 else "error"
            raise
        except CancelledError:
            outcome = "cancelled"
            raise
        finally:
            observe(outcome, self._clock.seconds() - started)

    def _attempt_span(
        self, timings: RequestTimings, method: bytes, url: bytes, attempt: int
    ) -> Phase:
        attributes: dict[str, str | int] = {
            **self._span_attributes,
            "http.request.method": method.decode("ascii"),
            "url.full": url.decode("ascii"),
            "yatagarasu.s3.attempt": attempt,
        }
        if attempt > 1:
            attributes["http.request.resend_count"] = attempt - 1
        return timings.begin(
            None, f"S3 {method.decode('ascii')}", kind=SpanKind.CLIENT, attributes=attributes
        )

    async def put(
        self, key: str, body: bytes, headers: Headers, payload_hash: str | None = None
    ) -> tuple[int, str | None]:
        """
        Store an object held in memory with one signed PUT (the payload's SHA-256 is signed);
        not retried here: the caller keeps the body and decides when to try again.

        :param key: the object key.
        :param body: the whole object.
        :param headers: headers to send with it (``Content-Type``...); not modified.
        :param payload_hash: the body's hex SHA-256 when the caller has it (computed off the
            reactor thread for a large body), else it is computed here.
        :returns: S3's status code, and its error code (``AccessDenied``...) when not 2xx.
        :raises UpstreamError: when S3 could not be reached or did not answer in time.
        """
        path = self.object_path(key)
        url = self._base + path.encode("ascii")
        digest = payload_hash or hashlib.sha256(body).hexdigest()
        response = await self._attempt(b"PUT", url, path, headers, body=body, payload_hash=digest)
        code, _, _ = await read_s3_error(response, self._clock, self.idle_seconds)
        if 200 <= response.code < 300:
            return response.code, None
        return response.code, code

    async def _attempt(
        self,
        method: bytes,
        url: bytes,
        path: str,
        headers: Headers,
        span: Phase | None = None,
        *,
        query: str = "",
        body: bytes | None = None,
        payload_hash: str = EMPTY_PAYLOAD_SHA256,
    ) -> IResponse:
        send = headers.copy()
        send.setRawHeaders(b"user-agent", [_USER_AGENT])
        if span is not None:
            span.inject(send)  # traceparent: not a signed header (SigV4 signs host, x-amz-*)
        keys = self._credentials.current()  # raises CredentialsUnavailable (503) without
        if keys is not None:
            signing_keys, signer = self._signing
            if signer is None or signing_keys is not keys:
                signer = SigV4Signer(keys, self._config.region)
                self._signing = (keys, signer)
            now = datetime.fromtimestamp(self._clock.seconds(), UTC)
            signed = signer.sign(method.decode("ascii"), self._host, path, now, query, payload_hash)
            for name, value in signed:
                send.setRawHeaders(name, [value])
        else:
            send.setRawHeaders(b"host", [self._host.encode("ascii")])
        producer = None if body is None else BytesBody(body)
        pending: Deferred[IResponse] = self._agent.request(method, url, send, producer)
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            pending.cancel()

        timeout = self._config.first_byte_seconds
        timer = self._clock.callLater(timeout, give_up)
        try:
            return await pending
        except (CancelledError, neterror.ConnectingCancelledError):
            if timed_out:
                raise _timeout(f"S3 did not answer within {timeout:g}s") from None
            raise CancelledError() from None  # our client went away: not S3's failure
        except neterror.TimeoutError:
            raise _timeout(
                f"cannot connect to S3 within {self._config.connect_seconds:g}s"
            ) from None
        except (ResponseNeverReceived, ResponseFailed) as e:
            if timed_out:
                raise _timeout(f"S3 did not answer within {timeout:g}s") from None
            if any(r.check(CancelledError) for r in e.reasons):
                raise CancelledError() from None  # Twisted wraps a cancel in flight like this
            reasons = ", ".join(r.getErrorMessage() for r in e.reasons)
            raise UpstreamError(
                502, f"S3 closed the connection ({reasons})", retryable=True
            ) from None
        except (neterror.ConnectError, neterror.DNSLookupError, OSError) as e:
            raise UpstreamError(502, f"cannot connect to S3 ({e})", retryable=True) from None
        finally:
            if timer.active():
                timer.cancel()

    async def _server_error(self, response: IResponse) -> UpstreamError:
        code, message, _ = await read_s3_error(response, self._clock, self.idle_seconds)
        detail = f"S3 answered {response.code}" + (f" {code}" if code else "")
        if message:
            detail += f": {message}"
        if code == "SlowDown" or response.code == 503:
            return UpstreamError(
                503, detail, retryable=True, s3_code=code, headers=[("Retry-After", "1")]
            )
        return UpstreamError(502, detail, retryable=True, s3_code=code)

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._pool is not None:
            await self._pool.close()


def _timeout(message: str) -> UpstreamError:
    return UpstreamError(504, message, retryable=True)

"""
The upstream S3 client: signed GET/HEAD with timeouts and retries, on one connection pool.

The data path uses ``twisted.web.client.Agent`` directly (treq costs ~25 % more per request)
with one persistent ``HTTPConnectionPool`` per bucket. HTTPS endpoints are verified with
service-identity (Agent's default ``BrowserLikePolicyForHTTPS``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from random import Random
from typing import Any, cast
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

from yatagarasu import __version__
from yatagarasu.config.schema import S3Config
from yatagarasu.errors import UpstreamError
from yatagarasu.observability.timings import UPSTREAM_FIRST_BYTE, Phase, RequestTimings
from yatagarasu.s3.errors import read_s3_error
from yatagarasu.s3.sigv4 import Credentials, SigV4Signer, encode_key
from yatagarasu.s3.upstream_health import UpstreamHealth

log = Logger()

_USER_AGENT = f"yatagarasu/{__version__}".encode()


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without a log line per connection opened and closed."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """
    The bucket's S3 endpoint, built once. Agent's default factory builds a new endpoint for
    every request, IDNA-encoding the host name each time (about 10 % of a relay's CPU).
    HTTPS is verified like Agent's default (``BrowserLikePolicyForHTTPS``: service-identity).
    """

    def __init__(self, reactor: Any, scheme: str, netloc: str, connect_timeout: float) -> None:
        parts = urlsplit(f"{scheme}://{netloc}")
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        if scheme == "https":
            creator = BrowserLikePolicyForHTTPS().creatorForNetloc(host.encode("idna"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        self._endpoint = endpoint

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return cast(IStreamClientEndpoint, self._endpoint)


class S3Client:
    """
    Fetch objects of one S3 bucket.

    :param reactor: provides time and TCP/TLS connections.
    :param config: the bucket's ``s3`` section.
    :param random: source of retry jitter.
    :param agent: the HTTP agent (default: an ``Agent`` on a persistent pool of
        ``connection_pool_size`` connections).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: S3Config,
        *,
        random: Random | None = None,
        agent: IAgent | None = None,
    ) -> None:
        self._clock = reactor
        self._config = config
        self._random = random or Random()
        self._pool: HTTPConnectionPool | None = None
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
        where = urlsplit(self._base.decode("ascii"))
        #: the attributes every attempt's span starts with
        self._span_attributes: dict[str, str | int] = {
            "server.address": where.hostname or self._host,
            "server.port": where.port or (443 if self._scheme == "https" else 80),
            "aws.s3.bucket": config.bucket,
        }
        self.health = UpstreamHealth(self._base.decode("ascii"))
        if agent is None:
            self._pool = _QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = config.connection_pool_size
            self._pool.cachedConnectionTimeout = 30
            endpoints = _OneEndpoint(reactor, self._scheme, self._host, config.connect_seconds)
            agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)
        self._agent = agent
        self._signer = (
            SigV4Signer(
                Credentials(config.access_key, config.secret_key, config.session_token),
                config.region,
            )
            if config.access_key
            else None
        )

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

    async def fetch(
        self, method: bytes, key: str, headers: Headers, timings: RequestTimings | None = None
    ) -> IResponse:
        """
        Send a signed request for an object, retrying what can be retried.

        Connect errors, timeouts and 5xx answers are retried up to ``retry.max_attempts``
        attempts in all, with jittered exponential backoff. Responses below 500 are returned
        as they are, body not yet read.

        :param method: ``b"GET"`` or ``b"HEAD"``.
        :param key: the object key.
        :param headers: client headers to pass on (range, conditionals); not modified.
        :param timings: the client request's timing record, when measured: the wait for the
            response head counts as ``upstream_first_byte``, and each attempt is a client span
            whose ``traceparent`` goes to S3.
        :returns: the upstream response.
        :raises UpstreamError: when every attempt failed (502, 503 SlowDown or 504).
        """
        if timings is None:
            return await self._fetch(method, key, headers, None)
        waiting = timings.begin(UPSTREAM_FIRST_BYTE)
        try:
            return await self._fetch(method, key, headers, timings)
        finally:
            timings.body_from = waiting.end()

    async def _fetch(
        self, method: bytes, key: str, headers: Headers, timings: RequestTimings | None
    ) -> IResponse:
        path = self.object_path(key)
        url = self._base + path.encode("ascii")
        retry = self._config.retry
        attempt = 1
        while True:
            span = None if timings is None else self._attempt_span(timings, method, url, attempt)
            try:
                response = await self._attempt(method, url, path, headers, span)
            except UpstreamError as e:
                failure = e
            except BaseException as e:
                if span is not None:
                    span.end(error=e)
                raise
            else:
                if response.code < 500:
                    self.health.record_success()
                    if span is not None:
                        span.end({"http.response.status_code": response.code})
                    return response
                failure = await self._server_error(response)
                if span is not None:
                    span.end(
                        {
                            "http.response.status_code": response.code,
                            "yatagarasu.s3.error": str(failure),
                        },
                        error=str(response.code),
                    )
            if span is not None:
                span.end(error=failure)
            self.health.record_failure(str(failure))
            if attempt >= retry.max_attempts or not failure.retryable:
                raise failure
            backoff_ms = min(retry.max_backoff_ms, retry.initial_backoff_ms * 2 ** (attempt - 1))
            delay = backoff_ms / 1000 * self._random.uniform(0.5, 1.0)
            log.info(
                "S3 attempt {attempt} failed ({failure}); retrying in {delay:.3f}s",
                attempt=attempt,
                failure=str(failure),
                delay=delay,
            )
            await deferLater(self._clock, delay)
            attempt += 1

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

    async def _attempt(
        self, method: bytes, url: bytes, path: str, headers: Headers, span: Phase | None
    ) -> IResponse:
        send = headers.copy()
        send.setRawHeaders(b"user-agent", [_USER_AGENT])
        if span is not None:
            span.inject(send)  # traceparent: not a signed header (SigV4 signs host, x-amz-*)
        if self._signer is not None:
            now = datetime.fromtimestamp(self._clock.seconds(), UTC)
            for name, value in self._signer.sign(method.decode("ascii"), self._host, path, now):
                send.setRawHeaders(name, [value])
        else:
            send.setRawHeaders(b"host", [self._host.encode("ascii")])
        pending: Deferred[IResponse] = self._agent.request(method, url, send)
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
            await self._pool.closeCachedConnections()


def _timeout(message: str) -> UpstreamError:
    return UpstreamError(504, message, retryable=True)

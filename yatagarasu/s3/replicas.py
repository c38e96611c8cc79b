"""
A bucket's upstreams (``s3.replicas``, or the one ``s3`` section as ``primary``), each behind
a circuit breaker, and the retry/failover loop of one request.

Every attempt goes to the highest-priority replica whose breaker admits it, preferring one
this request has not tried yet: after a failure the next attempt fails over to the next
replica at once, and only when every admitted replica has been tried does it back off
(``retry``'s jittered exponential backoff) and try again from the top. ``retry.max_attempts``
bounds the attempts of a request across all replicas. All of this happens before the response
is handed to the caller, so before the first byte reached the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from yatagarasu.config.schema import S3Config
from yatagarasu.errors import UpstreamError
from yatagarasu.interfaces import ICredentialProvider
from yatagarasu.observability.timings import UPSTREAM_FIRST_BYTE, RequestTimings
from yatagarasu.s3.breaker import CircuitBreaker, CircuitState, Permit
from yatagarasu.s3.client import AttemptObserver, S3Client
from yatagarasu.s3.credentials import CredentialsUnavailable, own_keys

log = Logger()

#: called once per failover with (bucket, from replica, to replica)
FailoverListener = Callable[[str, str, str], None]
#: builds an upstream's credential provider from (bucket, replica name, its ``s3`` section)
CredentialsFactory = Callable[[str, str, S3Config], ICredentialProvider]


def fixed_credentials(bucket: str, replica: str, section: S3Config) -> ICredentialProvider:
    """The section's own keys (unsigned without them): the default :data:`CredentialsFactory`."""
    return own_keys(section)


@dataclass(frozen=True)
class Replica:
    """
    One upstream of a bucket.

    :ivar name: the replica's name (``primary`` without ``replicas``).
    :ivar priority: lower is tried first.
    :ivar client: its S3 client.
    :ivar breaker: its circuit breaker.
    :ivar section: its ``s3`` section (kept across a reload while it is unchanged).
    :ivar credentials: what signs its requests (kept across a reload with the section).
    """

    name: str
    priority: int
    client: S3Client
    breaker: CircuitBreaker
    section: S3Config
    credentials: ICredentialProvider


def agent_key(bucket: str, replica: str | None) -> str:
    """
    :param bucket: a bucket name.
    :param replica: one of its ``replicas``' names (``None``: a bucket without replicas).
    :returns: the key of that upstream's agent in ``assemble(agents=...)`` (tests): the
        bucket name, or ``bucket/replica``.
    """
    return bucket if replica is None else f"{bucket}/{replica}"


class ReplicaSet:
    """
    Fetch objects of one bucket from its replicas.

    :param reactor: time, TCP/TLS connections.
    :param bucket: the bucket's name (logs, metrics).
    :param config: the bucket's ``s3`` section.
    :param agents: HTTP agents by :func:`agent_key` (tests); default: a persistent
        connection pool per replica.
    :param random: source of retry jitter.
    :param on_failover: told about every failover (the metric).
    :param observe: told of every attempt to every replica (outcome, seconds: the metrics).
    :param previous: the bucket's replica set of the running configuration (a reload): the
        breaker and the credential provider of a replica whose section
        (:meth:`S3Config.upstreams`) did not change are kept with their state; the others
        start afresh.
    :param credentials: builds each replica's credential provider (default: its section's
        own keys, :func:`fixed_credentials`).
    """

    def __init__(
        self,
        reactor: Any,
        bucket: str,
        config: S3Config,
        *,
        agents: Mapping[str, IAgent] | None = None,
        random: Random | None = None,
        on_failover: FailoverListener | None = None,
        observe: AttemptObserver | None = None,
        previous: ReplicaSet | None = None,
        credentials: CredentialsFactory = fixed_credentials,
    ) -> None:
        self._clock: IReactorTime = reactor
        self.bucket = bucket
        self._retry = config.retry
        self._random = random or Random()
        self._on_failover = on_failover
        agents = agents or {}
        replicated = bool(config.replicas)
        kept = {r.name: r for r in previous.replicas} if previous is not None else {}
        replicas = []
        for upstream in config.upstreams():
            old = kept.get(upstream.name)
            if old is not None and old.section == upstream.s3:
                breaker, provider = old.breaker, old.credentials
            else:
                breaker = CircuitBreaker(
                    reactor, config.circuit_breaker, self._state_logger(upstream.name)
                )
                provider = credentials(bucket, upstream.name, upstream.s3)
            client = S3Client(
                reactor,
                upstream.s3,
                agent=agents.get(agent_key(bucket, upstream.name if replicated else None)),
                observe=observe,
                credentials=provider,
            )
            replicas.append(
                Replica(upstream.name, upstream.priority, client, breaker, upstream.s3, provider)
            )
        self.replicas: Sequence[Replica] = tuple(replicas)

    def _state_logger(self, replica: str) -> Callable[[CircuitState, str | None], None]:
        def changed(state: CircuitState, last_error: str | None) -> None:
            log.warn(
                "Circuit of bucket {bucket} replica {replica} is {state}"
                " (last error: {last_error})",
                bucket=self.bucket,
                replica=replica,
                state=state.value,
                last_error=last_error,
            )

        return changed

    @property
    def usable(self) -> bool:
        """Whether some replica with usable credentials has a breaker letting requests through."""
        return any(r.breaker.admits_now() and r.credentials.usable() for r in self.replicas)

    @property
    def has_credentials(self) -> bool:
        """Whether some replica has usable credentials now."""
        return any(r.credentials.usable() for r in self.replicas)

    async def fetch(
        self, method: bytes, key: str, headers: Headers, timings: RequestTimings | None = None
    ) -> IResponse:
        """
        Fetch an object: retries and failover before anything was handed on.

        :param method: ``b"GET"`` or ``b"HEAD"``.
        :param key: the object key.
        :param headers: client headers to pass on (range, conditionals); not modified.
        :param timings: the client request's timing record, when measured: the wait for the
            response head (every attempt and backoff) counts as ``upstream_first_byte``, and
            each attempt is a client span whose ``traceparent`` goes to S3.
        :returns: the first answer below 500 (body not read).
        :raises UpstreamError: 503 with ``Retry-After`` when every breaker is open, else
            the last attempt's failure (502, 503 SlowDown, 504).
        """
        if timings is None:
            return await self._run(lambda client, n: client.attempt(method, key, headers, None, n))
        waiting = timings.begin(UPSTREAM_FIRST_BYTE)
        try:
            return await self._run(
                lambda client, n: client.attempt(method, key, headers, timings, n)
            )
        finally:
            timings.body_from = waiting.end()

    async def list(self, prefix: str, max_keys: int, token: str | None) -> IResponse:
        """
        List a prefix (ListObjectsV2, delimiter ``/``): retries and failover as :meth:`fetch`.

        :param prefix: the key prefix.
        :param max_keys: keys per page.
        :param token: S3's continuation token of the previous page, or ``None``.
        :returns: the first answer below 500 (body not read).
        :raises UpstreamError: as :meth:`fetch`.
        """
        return await self._run(lambda client, _n: client.list_attempt(prefix, max_keys, token))

    async def _run(self, send: Callable[[S3Client, int], Awaitable[IResponse]]) -> IResponse:
        """
        The retry and failover loop of one request.

        :param send: makes one attempt on a replica's client; given the attempt's number (1...).
        :returns: the first answer below 500 (body not read).
        :raises UpstreamError: as :meth:`fetch`.
        """
        tried: set[str] = set()
        previous: Replica | None = None
        failure: UpstreamError | None = None
        attempt = 1
        if not self.has_credentials:
            await self._first_credentials()
        while True:
            choice = self._choose(tried)
            if choice is None:
                raise failure if failure is not None else self._unavailable()
            replica, permit = choice
            if previous is not None and replica is not previous:
                self._failed_over(previous, replica, failure)
            tried.add(replica.name)
            try:
                response = await send(replica.client, attempt)
            except CredentialsUnavailable as e:
                permit.released()  # they expired meanwhile: not the upstream's failure
                failure = e
                continue
            except UpstreamError as e:
                permit.failed(str(e))
                failure = e
            except BaseException:
                permit.released()  # our client went away, or a bug: not the upstream's fault
                raise
            else:
                permit.succeeded()
                return response
            if attempt >= self._retry.max_attempts or not failure.retryable:
                raise failure
            if self._next_was_tried(tried):
                await self._back_off(attempt, failure)
            previous = replica
            attempt += 1

    async def _first_credentials(self) -> None:
        """Before the first fetch of any replica's credentials ended: wait for them (every
        request meanwhile shares the fetches in flight)."""
        for replica in self.replicas:
            if replica.credentials.pending():
                await replica.credentials.wait()
                if replica.credentials.usable():
                    return

    def _choose(self, tried: set[str]) -> tuple[Replica, Permit] | None:
        for fresh_only in (True, False):
            for replica in self.replicas:
                if fresh_only and replica.name in tried:
                    continue
                if not replica.credentials.usable():
                    continue  # failed over without counting against its breaker
                permit = replica.breaker.admit()
                if permit is not None:
                    return replica, permit
        return None

    def _next_was_tried(self, tried: set[str]) -> bool:
        for replica in self.replicas:
            if (
                replica.name not in tried
                and replica.breaker.admits_now()
                and replica.credentials.usable()
            ):
                return False
        return True

    async def _back_off(self, attempt: int, failure: UpstreamError) -> None:
        retry = self._retry
        backoff_ms = min(retry.max_backoff_ms, retry.initial_backoff_ms * 2 ** (attempt - 1))
        delay = backoff_ms / 1000 * self._random.uniform(0.5, 1.0)
        log.info(
            "S3 attempt {attempt} for bucket {bucket} failed ({failure}); retrying in {delay:.3f}s",
            attempt=attempt,
            bucket=self.bucket,
            failure=str(failure),
            delay=delay,
        )
        await deferLater(self._clock, delay)

    def _failed_over(self, source: Replica, target: Replica, failure: UpstreamError | None) -> None:
        log.warn(
            "Bucket {bucket}: failing over from replica {source} to {target} ({failure})",
            bucket=self.bucket,
            source=source.name,
            target=target.name,
            failure=str(failure),
        )
        if self._on_failover is not None:
            self._on_failover(self.bucket, source.name, target.name)

    def _unavailable(self) -> UpstreamError:
        """No replica to try: the credentials' error when a breaker would admit a replica
        that has none, else every circuit is open."""
        for replica in self.replicas:
            if replica.breaker.admits_now() and not replica.credentials.usable():
                try:
                    replica.credentials.current()
                except CredentialsUnavailable as e:
                    return e
        return self._all_open()

    def _all_open(self) -> UpstreamError:
        wait = min(r.breaker.retry_after() for r in self.replicas)
        which = "the circuit of the upstream" if len(self.replicas) == 1 else "every circuit"
        return UpstreamError(
            503,
            f"{which} is open (S3 kept failing); retry in {wait}s",
            retryable=False,
            headers=[("Retry-After", str(max(1, wait)))],
        )

    async def close(self) -> None:
        """Close every replica's pooled connections."""
        for replica in self.replicas:
            await replica.client.close()

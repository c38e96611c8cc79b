"""
Credential providers of the S3 clients (:class:`yatagarasu.interfaces.ICredentialProvider`).

:class:`FixedCredentials` holds keys that never change (``static``, and ``anonymous``: none).
:class:`RefreshingCredentials` fetches them (instance metadata, ECS, STS, the environment, the
shared files: :mod:`yatagarasu.s3.credential_sources`) on the injected clock, in the
background: temporary credentials are fetched again before they expire (5 minutes before, or
at half their remaining lifetime when that is shorter), so requests never wait while valid
ones exist; a failed fetch is retried with a bounded, jittered exponential backoff and never
stands in for credentials. Only a request that arrives before the first fetch ended waits,
and all such requests share that one fetch.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from random import Random
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from yatagarasu.config.schema import S3Config
from yatagarasu.errors import UpstreamError
from yatagarasu.interfaces import ICredentialProvider
from yatagarasu.s3.sigv4 import Credentials

log = Logger()

#: seconds a whole fetch (every HTTP exchange of it) may take
FETCH_TIMEOUT_SECONDS = 5.0
#: refresh this long before the credentials expire...
REFRESH_AHEAD_SECONDS = 300.0
#: ...or at this fraction of their remaining lifetime, when that comes later (short ones)
REFRESH_FRACTION = 0.5
#: backoff of failed fetches: the first retry, and the most between two attempts
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0

#: told of every fetch: its result (``ok`` or ``error``)
FetchObserver = Callable[[str], None]


class CredentialsFetchError(Exception):
    """A fetch gave no credentials (the message says why; it never holds a secret)."""


@dataclass(frozen=True)
class Fetched:
    """
    Credentials as a source gave them.

    :ivar credentials: the keys (and session token).
    :ivar expires_at: when they expire (``clock.seconds()`` scale), ``None``: never.
    """

    credentials: Credentials
    expires_at: float | None = None


class CredentialsUnavailable(UpstreamError):
    """No usable credentials for an upstream: 503 with ``Retry-After``, not S3's failure."""

    def __init__(self, source: str, last_error: str | None, retry_after: int) -> None:
        why = f": {last_error}" if last_error else ""
        super().__init__(
            503,
            f"no usable S3 credentials (source {source}){why}",
            retryable=False,
            headers=[("Retry-After", str(max(1, retry_after)))],
        )


@implementer(ICredentialProvider)
class FixedCredentials:
    """
    Credentials that never change: ``static`` keys, or none (``anonymous``: unsigned).

    :param source: ``static`` or ``anonymous``.
    :param credentials: the keys, ``None`` for anonymous.
    """

    def __init__(self, source: str, credentials: Credentials | None) -> None:
        self.source = source
        self._credentials = credentials

    def current(self) -> Credentials | None:
        return self._credentials

    def usable(self) -> bool:
        return True

    def pending(self) -> bool:
        return False

    def wait(self) -> Deferred[None]:
        return succeed(None)

    def status(self) -> Mapping[str, Any]:
        return {
            "source": self.source,
            "state": "ready",
            "expires_in_seconds": None,
            "last_error": None,
        }


def own_keys(section: S3Config) -> FixedCredentials:
    """
    :param section: an upstream's ``s3`` section.
    :returns: its ``access_key``/``secret_key``/``session_token``; anonymous without them.
    """
    if not section.access_key:
        return FixedCredentials("anonymous", None)
    keys = Credentials(section.access_key, section.secret_key, section.session_token)
    return FixedCredentials("static", keys)


@implementer(ICredentialProvider)
class RefreshingCredentials(Service):
    """
    Credentials fetched from a source, refreshed before they expire (a service: it fetches
    from ``startService`` on; a request before that starts the first fetch itself).

    :param clock: time (refresh and retry timers, fetch timeouts).
    :param source: the source's name (``/ready``, metrics, logs).
    :param fetch: fetches credentials once; raises :class:`CredentialsFetchError` (or
        anything else: the failure is logged by its message).
    :param upstream: ``bucket`` or ``bucket/replica``, for the log lines.
    :param observe: told of every fetch's result (the metric).
    :param random: jitter of the retry backoff.
    """

    def __init__(
        self,
        clock: IReactorTime,
        source: str,
        fetch: Callable[[], Awaitable[Fetched]],
        *,
        upstream: str,
        observe: FetchObserver | None = None,
        random: Random | None = None,
    ) -> None:
        self.source = source
        self._clock = clock
        self._fetch = fetch
        self._upstream = upstream
        self._observe = observe
        self._random = random or Random()
        self._fetched: Fetched | None = None
        self._in_flight: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []
        self._timer: IDelayedCall | None = None
        self._retry_at: float | None = None
        self._attempted = False
        self._failures = 0
        self._last_error: str | None = None
        self._stopped = False

    # -- ICredentialProvider ---------------------------------------------------------------

    def current(self) -> Credentials:
        fetched = self._fetched
        if fetched is not None and (
            fetched.expires_at is None or self._clock.seconds() < fetched.expires_at
        ):
            return fetched.credentials
        raise CredentialsUnavailable(self.source, self._last_error, self._retry_after())

    def usable(self) -> bool:
        fetched = self._fetched
        return fetched is not None and (
            fetched.expires_at is None or self._clock.seconds() < fetched.expires_at
        )

    def pending(self) -> bool:
        # no usable credentials, no failure yet, and a fetch running or never started
        return (
            not self.usable()
            and self._last_error is None
            and (self._in_flight is not None or not self._attempted)
        )

    def wait(self) -> Deferred[None]:
        if self._in_flight is None and not self._attempted:
            self._start_fetch()
        if self._in_flight is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(waiter)
        return waiter

    def status(self) -> Mapping[str, Any]:
        if self.usable():
            state = "ready"
        elif self._last_error is not None or not self.pending():
            state = "failed"  # until a fetch works again
        else:
            state = "fetching"
        fetched = self._fetched
        expires_in = (
            None
            if fetched is None or fetched.expires_at is None
            else max(0, int(fetched.expires_at - self._clock.seconds()))
        )
        return {
            "source": self.source,
            "state": state,
            "expires_in_seconds": expires_in,
            "last_error": self._last_error,
        }

    # -- the service ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._in_flight is None and self._timer is None:
            self._start_fetch()

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._in_flight is not None:
            self._stopped = True
            self._in_flight.cancel()

    # -- fetching ---------------------------------------------------------------------------

    def _start_fetch(self) -> None:
        self._timer = None
        self._attempted = True
        fetching = Deferred.fromCoroutine(self._fetch_once())
        if not fetching.called:
            self._in_flight = fetching

    async def _fetch_once(self) -> None:
        attempt = Deferred.fromCoroutine(_as_coroutine(self._fetch))
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            attempt.cancel()

        timer = self._clock.callLater(FETCH_TIMEOUT_SECONDS, give_up)
        try:
            fetched = await attempt
        except Exception as e:
            if timed_out:
                self._failed(f"no answer within {FETCH_TIMEOUT_SECONDS:g}s")
            elif not self._stopped:
                self._failed(str(e) or e.__class__.__name__)
        else:
            self._succeeded(fetched)
        finally:
            if timer.active():
                timer.cancel()
            self._in_flight = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _succeeded(self, fetched: Fetched) -> None:
        now = self._clock.seconds()
        if fetched.expires_at is not None and fetched.expires_at <= now:
            self._failed("the credentials fetched had already expired")
            return
        if self._failures:
            log.info(
                "S3 credentials of {upstream} (source {source}) fetched again after"
                " {failures} failed attempts",
                upstream=self._upstream,
                source=self.source,
                failures=self._failures,
            )
        self._fetched = fetched
        self._failures = 0
        self._last_error = None
        self._retry_at = None
        self._count("ok")
        if fetched.expires_at is not None:
            remaining = fetched.expires_at - now
            delay = max(remaining - REFRESH_AHEAD_SECONDS, remaining * REFRESH_FRACTION)
            self._schedule(delay)

    def _failed(self, error: str) -> None:
        self._failures += 1
        self._last_error = error
        self._count("error")
        backoff = min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2 ** (self._failures - 1))
        delay = backoff * self._random.uniform(0.5, 1.0)
        fetched = self._fetched
        if fetched is not None and fetched.expires_at is not None:
            # still valid ones: try again before they expire, however long the backoff
            left = fetched.expires_at - self._clock.seconds()
            if left > 0:
                delay = min(delay, max(left * REFRESH_FRACTION, 0.1))
        self._retry_at = self._clock.seconds() + delay
        if self._failures == 1:  # one line per failure streak
            log.warn(
                "Cannot fetch S3 credentials of {upstream} (source {source}): {error};"
                " retrying with backoff (in {delay:.1f}s)",
                upstream=self._upstream,
                source=self.source,
                error=error,
                delay=delay,
            )
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.callLater(max(delay, 0.0), self._start_fetch)

    def _retry_after(self) -> int:
        if self._retry_at is None:
            return 1
        return math.ceil(self._retry_at - self._clock.seconds())

    def _count(self, result: str) -> None:
        if self._observe is not None:
            self._observe(result)


async def _as_coroutine(fetch: Callable[[], Awaitable[Fetched]]) -> Fetched:
    return await fetch()

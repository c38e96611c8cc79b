"""
The refreshing credential provider on a fake clock: refresh before expiry without making
requests wait, failures retried with a bounded backoff and never cached, one shared first
fetch, one log line per failure streak, and nothing secret in any log event.
"""

from __future__ import annotations

from collections.abc import Iterator
from random import Random
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from tests.unit.fakes import FakeAgent, FakeResponse
from yatagarasu.config.schema import S3Config
from yatagarasu.s3.client import S3Client
from yatagarasu.s3.credentials import (
    FETCH_TIMEOUT_SECONDS,
    MAX_BACKOFF_SECONDS,
    CredentialsFetchError,
    CredentialsUnavailable,
    Fetched,
    RefreshingCredentials,
)
from yatagarasu.s3.sigv4 import Credentials

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class NoJitter(Random):
    """Backoff without jitter: ``uniform(a, b)`` is ``b``."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Source:
    """A fetch the test answers: each call waits on a Deferred of its own."""

    def __init__(self) -> None:
        self.calls: list[Deferred[Fetched]] = []

    async def __call__(self) -> Fetched:
        d: Deferred[Fetched] = Deferred()
        self.calls.append(d)
        return await d

    def give(self, clock: MemoryReactorClock, lifetime: float | None, n: int = 1) -> Credentials:
        keys = Credentials(f"ASIA{n:04d}", SECRET, f"token-{n}")
        expires = None if lifetime is None else clock.seconds() + lifetime
        self.calls[-1].callback(Fetched(keys, expires))
        return keys

    def fail(self, message: str = "HTTP 500") -> None:
        self.calls[-1].errback(CredentialsFetchError(message))


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def provider(clock: MemoryReactorClock, source: Source, **kwargs: Any) -> RefreshingCredentials:
    return RefreshingCredentials(
        clock, "instance", source, upstream="bucket b replica primary", random=NoJitter(), **kwargs
    )


def ours(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if "S3 credentials" in str(e.get("log_format"))]


def test_refreshes_five_minutes_before_expiry_and_requests_never_wait() -> None:
    clock, source = MemoryReactorClock(), Source()
    results: list[str] = []
    creds = provider(clock, source, observe=results.append)
    creds.startService()
    assert creds.pending() and len(source.calls) == 1
    first = source.give(clock, 3600)
    assert creds.current() is first and creds.status()["state"] == "ready"
    clock.advance(3600 - 300 - 1)
    assert len(source.calls) == 1, "refreshed too early"
    clock.advance(1)
    assert len(source.calls) == 2, "not refreshed 5 minutes before expiry"
    # the refresh is in flight: requests keep signing with the valid credentials, at once
    assert creds.usable() and creds.current() is first
    second = source.give(clock, 3600, n=2)
    assert creds.current() is second
    assert creds.status()["expires_in_seconds"] == 3600
    assert results == ["ok", "ok"]


def test_short_lived_credentials_refresh_at_half_their_lifetime() -> None:
    clock, source = MemoryReactorClock(), Source()
    creds = provider(clock, source)
    creds.startService()
    source.give(clock, 100)
    clock.advance(49)
    assert len(source.calls) == 1
    clock.advance(1)
    assert len(source.calls) == 2


def test_a_failure_is_not_cached_and_is_retried_with_bounded_backoff(
    logged: list[LogEvent],
) -> None:
    clock, source = MemoryReactorClock(), Source()
    results: list[str] = []
    creds = provider(clock, source, observe=results.append)
    creds.startService()
    delays = []
    for _ in range(9):
        source.fail()
        assert not creds.usable()
        with pytest.raises(CredentialsUnavailable) as raised:
            creds.current()
        assert raised.value.status == 503
        retry_after = int(dict(raised.value.headers)["Retry-After"])
        calls = len(source.calls)
        waited = 0
        while len(source.calls) == calls and waited < 2 * MAX_BACKOFF_SECONDS:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
        assert retry_after == pytest.approx(waited, abs=1)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    status = creds.status()
    # a retry is in flight: still failed (no credentials) until it works
    assert status["state"] == "failed" and status["last_error"] == "HTTP 500"
    # one warning for the whole streak, then one line when it ends
    source.give(clock, 3600)
    assert creds.usable() and creds.status()["last_error"] is None
    lines = ours(logged)
    assert len(lines) == 2, lines
    assert "Cannot fetch S3 credentials of bucket b replica primary" in lines[0]
    assert "HTTP 500" in lines[0]
    assert "after 9 failed attempts" in lines[1]
    assert results == ["error"] * 9 + ["ok"]
    assert not any(SECRET in formatEvent(e) or "token-1" in formatEvent(e) for e in logged)


def test_a_failed_refresh_keeps_the_valid_credentials_and_retries_before_they_expire() -> None:
    clock, source = MemoryReactorClock(), Source()
    creds = provider(clock, source)
    creds.startService()
    first = source.give(clock, 600)
    clock.advance(300)  # the refresh
    for _ in range(100):
        if len(source.calls) > 1 and not source.calls[-1].called:
            source.fail("HTTP 503")
        if clock.seconds() >= 590:
            break
        clock.advance(5)
    assert creds.current() is first, "valid credentials dropped after a failed refresh"
    assert len(source.calls) > 2, "a failed refresh was not retried"
    clock.advance(20)  # past the expiry: none left
    assert not creds.usable()
    with pytest.raises(CredentialsUnavailable):
        creds.current()


def test_concurrent_first_requests_share_one_fetch() -> None:
    clock, source = MemoryReactorClock(), Source()
    creds = provider(clock, source)  # not started: the first request starts the fetch
    waits = [creds.wait() for _ in range(5)]
    assert len(source.calls) == 1
    assert not any(w.called for w in waits)
    keys = source.give(clock, 3600)
    assert all(w.called for w in waits)
    assert creds.current() is keys
    assert creds.wait().called and len(source.calls) == 1


def test_a_fetch_that_does_not_answer_times_out_and_is_retried() -> None:
    clock, source = MemoryReactorClock(), Source()
    creds = provider(clock, source)
    creds.startService()
    clock.advance(FETCH_TIMEOUT_SECONDS)
    assert creds.status()["state"] == "failed"
    assert creds.status()["last_error"] == f"no answer within {FETCH_TIMEOUT_SECONDS:g}s"
    clock.advance(1)
    assert len(source.calls) == 2


def test_stopping_cancels_the_fetch_and_the_timers() -> None:
    clock, source = MemoryReactorClock(), Source()
    creds = provider(clock, source)
    creds.startService()
    creds.stopService()
    assert source.calls[0].called  # cancelled
    assert clock.getDelayedCalls() == []
    assert creds.status()["last_error"] is None


def test_expired_credentials_from_the_source_count_as_a_failure() -> None:
    clock, source = MemoryReactorClock(), Source()
    creds = provider(clock, source)
    creds.startService()
    source.give(clock, 0)
    assert not creds.usable()
    assert creds.status()["last_error"] == "the credentials fetched had already expired"


def test_the_client_signs_each_request_with_the_credentials_of_the_moment() -> None:
    clock, source = MemoryReactorClock(), Source()
    clock.advance(1_700_000_000)
    creds = provider(clock, source)
    creds.startService()
    agent = FakeAgent()
    config = S3Config(bucket="b", endpoint="http://127.0.0.1:9000")
    client = S3Client(clock, config, agent=agent, credentials=creds)
    source.give(clock, 600, n=1)

    def send() -> tuple[bytes, bytes]:
        d = Deferred.fromCoroutine(client.attempt(b"GET", "k", Headers()))
        sent = agent.sent[-1].headers
        agent.answer(FakeResponse(200, {}, body=b""))
        assert d.called
        return sent.getRawHeaders(b"authorization")[0], sent.getRawHeaders(b"x-amz-security-token")[
            0
        ]

    authorization, token = send()
    assert b"Credential=ASIA0001/" in authorization and token == b"token-1"
    assert b"x-amz-security-token" in authorization  # the token is a signed header
    clock.advance(300)  # the refresh
    source.give(clock, 600, n=2)
    authorization, token = send()
    assert b"Credential=ASIA0002/" in authorization and token == b"token-2"

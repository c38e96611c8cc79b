"""
A bucket's replicas behind circuit breakers (yatagarasu.s3.replicas): priority order,
failover before anything was handed on, backoff, 503 when every circuit is open, recovery.
"""

from __future__ import annotations

from random import Random
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.unit.fakes import FakeAgent, FakeResponse
from yatagarasu.config.schema import S3Config
from yatagarasu.config.typed import from_raw
from yatagarasu.errors import UpstreamError
from yatagarasu.s3.breaker import CircuitState
from yatagarasu.s3.replicas import ReplicaSet, agent_key

NAMES = ("primary", "secondary", "tertiary")


def replica_set(
    clock: Clock, failovers: list[tuple[str, str, str]] | None = None, **s3: Any
) -> tuple[ReplicaSet, dict[str, FakeAgent]]:
    raw = {
        "replicas": [
            # listed out of order: priority decides
            {"name": "tertiary", "bucket": "t", "priority": 3, "endpoint": "http://127.0.0.1:3"},
            {"name": "primary", "bucket": "p", "priority": 1, "endpoint": "http://127.0.0.1:1"},
            {"name": "secondary", "bucket": "s", "priority": 2, "endpoint": "http://127.0.0.1:2"},
        ],
        **s3,
    }
    config = from_raw(S3Config, raw, "s3")
    agents = {name: FakeAgent() for name in NAMES}
    seen = failovers if failovers is not None else []
    replicas = ReplicaSet(
        clock,
        "pub",
        config,
        agents={agent_key("pub", name): agent for name, agent in agents.items()},
        random=Random(7),
        on_failover=lambda *names: seen.append(names),
    )
    return replicas, agents


def fetch(replicas: ReplicaSet) -> list[Any]:
    results: list[Any] = []
    d = Deferred.fromCoroutine(replicas.fetch(b"GET", "k", Headers()))
    d.addBoth(results.append)
    return results


def outcome(results: list[Any]) -> Any:
    assert len(results) == 1
    result = results[0]
    return result.value if isinstance(result, Failure) else result


def states(replicas: ReplicaSet) -> list[CircuitState]:
    return [r.breaker.state for r in replicas.replicas]


def test_highest_priority_first_then_failover_at_once() -> None:
    clock = Clock()
    failovers: list[tuple[str, str, str]] = []
    replicas, agents = replica_set(clock, failovers)
    assert [r.name for r in replicas.replicas] == list(NAMES)
    results = fetch(replicas)
    assert [len(agents[n].sent) for n in NAMES] == [1, 0, 0]
    assert agents["primary"].sent[0].uri == b"http://127.0.0.1:1/p/k"
    agents["primary"].fail(ConnectionRefusedError())
    # no backoff before trying another replica
    assert agents["secondary"].sent[0].uri == b"http://127.0.0.1:2/s/k"
    ok = FakeResponse(200, {}, body=b"x")
    agents["secondary"].answer(ok)
    assert outcome(results) is ok
    assert failovers == [("pub", "primary", "secondary")]


def test_tertiary_when_both_others_fail() -> None:
    clock = Clock()
    failovers: list[tuple[str, str, str]] = []
    replicas, agents = replica_set(clock, failovers)
    results = fetch(replicas)
    agents["primary"].fail(ConnectionRefusedError())
    agents["secondary"].answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code>"))
    ok = FakeResponse(200, {}, body=b"x")
    agents["tertiary"].answer(ok)
    assert outcome(results) is ok
    assert failovers == [("pub", "primary", "secondary"), ("pub", "secondary", "tertiary")]


def test_backs_off_before_trying_a_replica_again_within_max_attempts() -> None:
    clock = Clock()
    replicas, agents = replica_set(
        clock,
        retry={"max_attempts": 4, "initial_backoff_ms": 1000, "max_backoff_ms": 1000},
    )
    results = fetch(replicas)
    for name in NAMES:
        agents[name].fail(ConnectionRefusedError())
    assert len(agents["primary"].sent) == 1  # waiting: every replica was tried
    clock.advance(1)
    assert len(agents["primary"].sent) == 2
    agents["primary"].fail(ConnectionRefusedError())
    error = outcome(results)
    assert isinstance(error, UpstreamError)
    assert error.status == 502
    assert sum(len(a.sent) for a in agents.values()) == 4


def test_4xx_is_a_success_for_the_breaker_and_is_not_retried() -> None:
    clock = Clock()
    replicas, agents = replica_set(clock, circuit_breaker={"failure_threshold": 1})
    results = fetch(replicas)
    missing = FakeResponse(404, {}, body=b"<Error><Code>NoSuchKey</Code></Error>")
    agents["primary"].answer(missing)
    assert outcome(results) is missing
    assert states(replicas)[0] is CircuitState.CLOSED
    assert agents["secondary"].sent == []


def test_every_circuit_open_is_503_with_retry_after_until_half_open() -> None:
    clock = Clock()
    replicas, agents = replica_set(
        clock,
        circuit_breaker={"failure_threshold": 1, "timeout_seconds": 30},
        retry={"max_attempts": 3},
    )
    results = fetch(replicas)
    for name in NAMES:
        agents[name].fail(ConnectionRefusedError())
    assert isinstance(outcome(results), UpstreamError)
    assert states(replicas) == [CircuitState.OPEN] * 3
    assert not replicas.usable
    clock.advance(12)
    error = outcome(fetch(replicas))
    assert isinstance(error, UpstreamError)
    assert error.status == 503
    assert dict(error.headers)["Retry-After"] == "18"
    assert sum(len(a.sent) for a in agents.values()) == 3  # nothing was sent


def test_skips_an_open_primary_and_returns_to_it_after_recovery() -> None:
    clock = Clock()
    replicas, agents = replica_set(
        clock,
        circuit_breaker={"failure_threshold": 2, "timeout_seconds": 10, "success_threshold": 1},
    )
    for _ in range(2):
        results = fetch(replicas)
        agents["primary"].fail(ConnectionRefusedError())
        agents["secondary"].answer(FakeResponse(200, {}, body=b"s"))
        assert isinstance(outcome(results), FakeResponse)
    assert states(replicas)[0] is CircuitState.OPEN
    sent_to_primary = len(agents["primary"].sent)
    results = fetch(replicas)
    assert len(agents["primary"].sent) == sent_to_primary  # open: skipped
    agents["secondary"].answer(FakeResponse(200, {}, body=b"s"))
    outcome(results)
    clock.advance(10)
    results = fetch(replicas)
    assert len(agents["primary"].sent) == sent_to_primary + 1  # the half-open trial
    back: IResponse = FakeResponse(200, {}, body=b"p")
    agents["primary"].answer(back)  # type: ignore[arg-type]
    assert outcome(results) is back
    assert states(replicas)[0] is CircuitState.CLOSED


def test_a_client_going_away_gives_the_trial_slot_back() -> None:
    clock = Clock()
    replicas, agents = replica_set(
        clock, circuit_breaker={"failure_threshold": 1, "half_open_max_requests": 1}
    )
    results = fetch(replicas)
    for name in NAMES:
        agents[name].fail(ConnectionRefusedError())
    outcome(results)
    clock.advance(60)
    d = Deferred.fromCoroutine(replicas.fetch(b"GET", "k", Headers()))
    d.addErrback(lambda _: None)
    d.cancel()
    assert agents["primary"].sent[-1].cancelled
    assert replicas.replicas[0].breaker.admits_now()


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_counts_and_opens_the_breaker(status: int) -> None:
    clock = Clock()
    replicas, agents = replica_set(
        clock, circuit_breaker={"failure_threshold": 1}, retry={"max_attempts": 1}
    )
    results = fetch(replicas)
    agents["primary"].answer(FakeResponse(status, {}, body=b"<Error><Code>SlowDown</Code>"))
    error = outcome(results)
    assert isinstance(error, UpstreamError)
    assert error.status == 503  # SlowDown
    assert states(replicas)[0] is CircuitState.OPEN


def test_one_log_line_per_failover() -> None:
    clock = Clock()
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        replicas, agents = replica_set(clock)
        results = fetch(replicas)
        agents["primary"].fail(ConnectionRefusedError())
        agents["secondary"].answer(FakeResponse(200, {}, body=b"s"))
        outcome(results)
    finally:
        globalLogPublisher.removeObserver(events.append)
    failovers = [e for e in events if e.get("log_format", "").startswith("Bucket {bucket}: fail")]
    assert len(failovers) == 1
    assert (failovers[0]["source"], failovers[0]["target"]) == ("primary", "secondary")


def test_a_bucket_without_replicas_has_one_primary_breaker() -> None:
    clock = Clock()
    config = from_raw(S3Config, {"bucket": "b", "endpoint": "http://127.0.0.1:9"}, "s3")
    agent = FakeAgent()
    replicas = ReplicaSet(clock, "pub", config, agents={"pub": agent})
    assert [(r.name, r.client.origin) for r in replicas.replicas] == [
        ("primary", "http://127.0.0.1:9")
    ]
    fetch(replicas)
    assert agent.sent[0].uri == b"http://127.0.0.1:9/b/k"


def test_a_listing_fails_over_like_an_object() -> None:
    clock = Clock()
    failovers: list[tuple[str, str, str]] = []
    replicas, agents = replica_set(clock, failovers)
    results: list[Any] = []
    listing = Deferred.fromCoroutine(replicas.list("docs/", 100, "tok"))
    listing.addBoth(results.append)
    query = b"?continuation-token=tok&delimiter=%2F&list-type=2&max-keys=100&prefix=docs%2F"
    assert agents["primary"].sent[0].uri == b"http://127.0.0.1:1/p/" + query
    agents["primary"].answer(FakeResponse(500, body=b"<Error><Code>InternalError</Code></Error>"))
    assert failovers == [("pub", "primary", "secondary")]
    assert agents["secondary"].sent[0].uri == b"http://127.0.0.1:2/s/" + query
    answer = FakeResponse(200, body=b"<ListBucketResult/>")
    agents["secondary"].answer(answer)
    assert outcome(results) is answer

"""The local limiter: several limits charged together or not at all, on the injected clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from yatagarasu.interfaces import IRateLimiter
from yatagarasu.limits.local import LocalLimiter
from yatagarasu.values import RateLimit

PER_IP = RateLimit("per_ip", 1.0, 2)
GLOBAL = RateLimit("global", 1.0, 3)


def test_provides_the_interface() -> None:
    assert verifyObject(IRateLimiter, LocalLimiter(Clock(), 10))


def test_a_refused_request_charges_no_limit() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock, 10)
    a = limiter.acquire([(PER_IP, "10.0.0.1"), (GLOBAL, "")])
    b = limiter.acquire([(PER_IP, "10.0.0.1"), (GLOBAL, "")])
    assert a.allowed and b.allowed
    refused = limiter.acquire([(PER_IP, "10.0.0.1"), (GLOBAL, "")])
    assert not refused.allowed and refused.scope == "per_ip"
    assert refused.retry_after == 1.0
    # the global limit was not charged by the refusal: one left for another client
    other = limiter.acquire([(PER_IP, "10.0.0.2"), (GLOBAL, "")])
    assert other.allowed and other.scope == "global" and other.remaining == 0
    assert not limiter.acquire([(PER_IP, "10.0.0.3"), (GLOBAL, "")]).allowed


def test_the_decision_reports_the_limit_with_least_room() -> None:
    limiter = LocalLimiter(Clock(), 10)
    decision = limiter.acquire([(RateLimit("per_ip", 1.0, 100), "x"), (GLOBAL, "")])
    assert (decision.scope, decision.limit, decision.remaining) == ("global", 3, 2)


def test_time_comes_from_the_clock() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock, 10)
    for _ in range(2):
        assert limiter.acquire([(PER_IP, "a")]).allowed
    assert not limiter.acquire([(PER_IP, "a")]).allowed
    clock.advance(1.0)
    assert limiter.acquire([(PER_IP, "a")]).allowed


def test_client_keys_are_bounded_per_limit_and_fixed_keys_are_not() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock, 50)
    bucket = RateLimit("bucket", 1000.0, 1000)
    for i in range(500):
        limiter.acquire([(PER_IP, f"192.0.2.{i}"), (bucket, "b")])
    assert limiter.keys(PER_IP) == 50
    assert limiter.evictions == 450
    assert limiter.keys(bucket) == 1
    assert limiter.acquire([(bucket, "b")]).remaining == 1000 - 501

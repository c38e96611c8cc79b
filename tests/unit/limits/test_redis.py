"""
The Redis limiter against a fake adapter: EVALSHA, NOSCRIPT reload, fail modes, one log per
outage. The script itself runs on a real redis-server (tests/integration/test_rate_limit_*).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from yatagarasu.cache.redis_client import (
    RedisClient,
    RedisScriptMissing,
    RedisTarget,
    RedisUnavailable,
)
from yatagarasu.interfaces import IRateLimiter
from yatagarasu.limits.redis import SCRIPT, SCRIPT_SHA, RedisLimiter
from yatagarasu.values import RateDecision, RateLimit

PER_IP = RateLimit("per_ip", 2.0, 4)
GLOBAL = RateLimit("global", 100.0, 100, "sliding_window")


class FakeRedis:
    """Answers EVALSHA from a queue of replies (or failures); records the calls."""

    target = RedisTarget("127.0.0.1", 6379)

    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.calls: list[tuple[Any, ...]] = []
        self.loaded = False

    def evalsha(self, sha: bytes, keys: Sequence[bytes], args: Sequence[bytes]) -> Deferred[Any]:
        self.calls.append(("evalsha", sha, list(keys), list(args)))
        if not self.loaded:
            return fail(RedisScriptMissing("evalsha: NOSCRIPT"))
        reply = self.replies.pop(0)
        return fail(reply) if isinstance(reply, Exception) else succeed(reply)

    def script_load(self, script: bytes) -> Deferred[bytes]:
        self.calls.append(("script_load", script))
        self.loaded = True
        return succeed(SCRIPT_SHA)

    def close(self) -> Deferred[None]:
        return succeed(None)


def decide(limiter: RedisLimiter, checks: list[tuple[RateLimit, str]]) -> RateDecision:
    results: list[RateDecision] = []
    cast(Deferred[RateDecision], limiter.acquire(checks)).addCallback(results.append)
    assert results, "the decision did not arrive"
    return results[0]


def limiter(redis: FakeRedis, *, fail_open: bool = True) -> RedisLimiter:
    return RedisLimiter(cast(RedisClient, redis), "yg:rl:", fail_open=fail_open)


def test_provides_the_interface() -> None:
    assert verifyObject(IRateLimiter, limiter(FakeRedis()))


def test_the_script_is_loaded_on_noscript_then_run_with_evalsha() -> None:
    redis = FakeRedis()
    limits = limiter(redis)
    redis.replies = [[1, 2, 37, 1500, 0], [0, 1, 0, 2000, 500]]
    allowed = decide(limits, [(PER_IP, "10.0.0.1"), (GLOBAL, "")])
    assert allowed == RateDecision(True, "global", 100, 37, 1.5)
    refused = decide(limits, [(PER_IP, "10.0.0.1"), (GLOBAL, "")])
    assert refused == RateDecision(False, "per_ip", 4, 0, 2.0, 0.5)
    kinds = [c[0] for c in redis.calls]
    assert kinds == ["evalsha", "script_load", "evalsha", "evalsha"]
    assert redis.calls[1][1] == SCRIPT and limits.script_loads == 1
    _, sha, keys, args = redis.calls[0]
    assert sha == SCRIPT_SHA
    assert keys == [b"yg:rl:per_ip:token_bucket:10.0.0.1", b"yg:rl:global:sliding_window:"]
    assert args == [b"token_bucket", b"2.0", b"4", b"sliding_window", b"100.0", b"100"]
    # Redis forgot the script (restart, SCRIPT FLUSH): loaded again
    redis.loaded = False
    redis.replies = [[1, 1, 3, 500, 0]]
    assert decide(limits, [(PER_IP, "x")]).allowed
    assert limits.script_loads == 2


def collect_logs() -> tuple[list[LogEvent], Any]:
    events: list[LogEvent] = []

    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == "yatagarasu.limits":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    return events, observer


def test_an_outage_follows_the_fail_mode_is_counted_and_logged_once() -> None:
    for fail_open in (True, False):
        redis = FakeRedis()
        redis.loaded = True
        limits = limiter(redis, fail_open=fail_open)
        events, observer = collect_logs()
        try:
            redis.replies = [RedisUnavailable("down")] * 3 + [[1, 1, 3, 500, 0]]
            decisions = [decide(limits, [(PER_IP, "a")]) for _ in range(4)]
        finally:
            globalLogPublisher.removeObserver(observer)
        assert [d.degraded for d in decisions] == [True, True, True, False]
        assert [d.allowed for d in decisions[:3]] == [fail_open] * 3
        assert limits.unavailable == 3
        levels = [e["log_level"].name for e in events]
        assert levels == ["warn", "info"], events
        assert events[0]["fail_mode"] == ("fail_open" if fail_open else "fail_closed")


def test_a_reply_of_the_wrong_shape_is_a_failure_not_a_crash() -> None:
    redis = FakeRedis()
    redis.loaded = True
    redis.replies = [[b"garbage"]]
    decision = decide(limiter(redis, fail_open=False), [(PER_IP, "a")])
    assert decision.degraded and not decision.allowed

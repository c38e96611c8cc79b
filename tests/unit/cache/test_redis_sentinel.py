"""
Finding the Redis master through Sentinel, on fakes and a fake clock: the resolver's order and
fallbacks, the endpoint that resolves before every connection, the sentinel query of the
adapter, ``READONLY`` handling and the ``cache.redis`` settings for Sentinel. The failover with
real processes is in ``tests/integration/test_redis_sentinel.py`` (this module has another name:
the two would clash in pytest's rootdir import mode).
"""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from yatagarasu.cache.redis import redis_settings
from yatagarasu.cache.redis_client import RedisClient, RedisTarget, RedisUnavailable
from yatagarasu.cache.redis_sentinel import (
    SENTINEL_PORT,
    Address,
    MasterEndpoint,
    MasterNotFound,
    SentinelResolver,
    SentinelTarget,
    parse_address,
)
from yatagarasu.errors import ConfigError

PATH = "cache.redis"


class FakeSentinel:
    """``ask`` of one sentinel: answers ``answer``, or raises it when it is an exception."""

    def __init__(self, answer: Address | Exception | None) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def ask(self, master_name: str) -> Address | None:
        self.asked.append(master_name)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def resolve(resolver: SentinelResolver, case: SynchronousTestCase) -> Address:
    result: Address = case.successResultOf(Deferred.fromCoroutine(resolver.master()))
    return result


class ResolverTests(SynchronousTestCase):
    def test_the_first_sentinel_that_names_a_master_wins(self) -> None:
        down = FakeSentinel(ConnectionRefusedError("refused"))
        unaware = FakeSentinel(None)
        good = FakeSentinel(("10.0.0.7", 6380))
        never = FakeSentinel(("10.0.0.9", 6381))
        resolver = SentinelResolver(
            "main", [("a", down.ask), ("b", unaware.ask), ("c", good.ask), ("d", never.ask)]
        )
        self.assertEqual(resolve(resolver, self), ("10.0.0.7", 6380))
        self.assertEqual((down.asked, unaware.asked, good.asked), (["main"], ["main"], ["main"]))
        self.assertEqual(never.asked, [])
        # Next time the sentinel that answered is asked first.
        self.assertEqual(resolve(resolver, self), ("10.0.0.7", 6380))
        self.assertEqual((len(down.asked), len(good.asked)), (1, 2))

    def test_no_master_named_is_a_connect_error_listing_each_sentinel(self) -> None:
        resolver = SentinelResolver(
            "main",
            [("a:1", FakeSentinel(TimeoutError("slow")).ask), ("b:2", FakeSentinel(None).ask)],
        )
        failure = self.failureResultOf(Deferred.fromCoroutine(resolver.master()), MasterNotFound)
        text = str(failure.value)
        self.assertIn("a:1: slow", text)
        self.assertIn("b:2: does not know 'main'", text)

    def test_on_change_only_when_the_master_moves(self) -> None:
        changes: list[Address] = []
        sentinel = FakeSentinel(("h", 1))
        resolver = SentinelResolver("main", [("s", sentinel.ask)], on_change=changes.append)
        resolve(resolver, self)
        resolve(resolver, self)
        self.assertEqual(changes, [])
        sentinel.answer = ("h", 2)
        self.assertEqual(resolve(resolver, self), ("h", 2))
        self.assertEqual(changes, [("h", 2)])
        self.assertEqual(resolver.current, ("h", 2))

    def test_at_least_one_sentinel(self) -> None:
        with pytest.raises(ValueError):
            SentinelResolver("main", [])


class FakeEndpoint:
    def __init__(self, address: Address, log: list[Address]) -> None:
        self.address = address
        self.log = log

    def connect(self, factory: Any) -> Deferred[Any]:
        self.log.append(self.address)
        return succeed(("protocol for", self.address))


class MasterEndpointTests(SynchronousTestCase):
    def test_resolves_before_every_connection(self) -> None:
        sentinel = FakeSentinel(("h", 1))
        connected: list[Address] = []
        endpoint = MasterEndpoint(
            SentinelResolver("main", [("s", sentinel.ask)]),
            lambda host, port: FakeEndpoint((host, port), connected),  # type: ignore[arg-type,return-value]
        )
        verifyObject(IStreamClientEndpoint, endpoint)
        self.assertEqual(self.successResultOf(endpoint.connect(None)), ("protocol for", ("h", 1)))
        sentinel.answer = ("h", 2)  # a failover
        self.successResultOf(endpoint.connect(None))
        self.assertEqual(connected, [("h", 1), ("h", 2)])
        self.assertEqual(len(sentinel.asked), 2)

    def test_no_master_fails_the_connection_attempt(self) -> None:
        endpoint = MasterEndpoint(
            SentinelResolver("main", [("s", FakeSentinel(None).ask)]),
            lambda host, port: pytest.fail("must not connect"),
        )
        self.failureResultOf(endpoint.connect(None), MasterNotFound)


# -- the adapter: asking a sentinel, READONLY ---------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class FakeConnection:
    def __init__(self) -> None:
        self.transport = FakeTransport()


class FakeQueue:
    def __init__(self) -> None:
        self.peekers: list[Any] = []
        self.waiting: list[Any] = []
        self.pending: list[Any] = []  # no ready connection: commands go through the handler


class FakeHandler:
    def __init__(self) -> None:
        self.reply: Any = None
        self.hang = False

    def _answer(self) -> Deferred[Any]:
        if self.hang:
            return Deferred()
        if isinstance(self.reply, Exception):
            return fail(self.reply)
        return succeed(self.reply)

    def sentinel_get_master_addr_by_name(self, name: bytes) -> Deferred[Any]:
        return self._answer()

    def setex(self, key: bytes, ttl: int, value: bytes) -> Deferred[Any]:
        return self._answer()


class FakePool:
    def __init__(self) -> None:
        self.handler = FakeHandler()
        self.pool = [FakeConnection(), FakeConnection()]
        self.size = 2
        self.connections_made = 2
        self.connectionQueue = FakeQueue()

    def disconnect(self) -> Deferred[None]:
        return succeed(None)


class AdapterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = RedisClient(
            RedisTarget("127.0.0.1", 26379, db=None), self.clock, timeout=0.5, pool_size=1
        )
        self.pool = FakePool()
        self.client._factory = self.pool  # type: ignore[assignment]

    def test_sentinel_master_parses_the_reply(self) -> None:
        self.pool.handler.reply = [b"10.1.2.3", b"6380"]
        ask = Deferred.fromCoroutine(self.client.sentinel_master("main"))
        self.assertEqual(self.successResultOf(ask), ("10.1.2.3", 6380))
        self.pool.handler.reply = None
        self.assertIsNone(
            self.successResultOf(Deferred.fromCoroutine(self.client.sentinel_master("x")))
        )

    def test_a_silent_sentinel_is_skipped_after_the_timeout(self) -> None:
        self.pool.handler.hang = True
        other = FakeSentinel(("h", 2))
        resolver = SentinelResolver(
            "main", [("silent", self.client.sentinel_master), ("other", other.ask)]
        )
        found = Deferred.fromCoroutine(resolver.master())
        self.assertNoResult(found)
        self.clock.advance(0.5)
        self.assertEqual(self.successResultOf(found), ("h", 2))

    def test_readonly_is_a_failure_that_drops_the_connections(self) -> None:
        self.pool.handler.reply = txredisapi.ResponseError(
            "READONLY You can't write against a read only replica."
        )
        d = Deferred.fromCoroutine(self.client.setex(b"k", 10, b"v"))
        self.failureResultOf(d, RedisUnavailable)
        self.assertFalse(self.client.healthy)
        self.assertTrue(all(conn.transport.lost for conn in self.pool.pool))

    def test_other_error_replies_mean_redis_is_up(self) -> None:
        self.pool.handler.reply = txredisapi.ResponseError("WRONGTYPE nope")
        self.failureResultOf(Deferred.fromCoroutine(self.client.setex(b"k", 10, b"v")))
        self.assertTrue(self.client.healthy)
        self.assertFalse(any(conn.transport.lost for conn in self.pool.pool))


class SwitchMasterTests(SynchronousTestCase):
    def setUp(self) -> None:
        target = RedisTarget("", 0, sentinel=SentinelTarget("main", (("s1", 1), ("s2", 2))))
        self.client = RedisClient(target, MemoryReactorClock(), timeout=0.5, pool_size=2)
        self.watchers = self.client.master_watchers()
        self.pool = FakePool()
        self.client._factory = self.pool  # type: ignore[assignment]
        resolver = self.client._resolver
        assert resolver is not None
        resolver.current = ("h", 1)

    def dropped(self) -> bool:
        lost = [conn.transport.lost for conn in self.pool.pool]
        self.assertEqual(len(set(lost)), 1)
        return lost[0]

    def test_one_watcher_per_sentinel_and_none_without_sentinel(self) -> None:
        self.assertEqual(len(self.watchers), 2)
        self.assertFalse(any(w.running for w in self.watchers))
        direct = RedisClient(RedisTarget("h", 1), MemoryReactorClock(), timeout=0.5, pool_size=1)
        self.assertEqual(direct.master_watchers(), [])

    def test_another_master_announced_drops_the_connections(self) -> None:
        self.client._switch_announced(b"main h 1 h 2")
        self.assertTrue(self.dropped())

    def test_other_announcements_are_ignored(self) -> None:
        for message in [b"other h 1 h 2", b"main h 2 h 1", b"main h 1 h port", b"garbage"]:
            self.client._switch_announced(message)
        self.assertFalse(self.dropped())


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("h", ("h", SENTINEL_PORT)),
        ("h:1", ("h", 1)),
        ("10.0.0.1:26380", ("10.0.0.1", 26380)),
        ("[::1]:5", ("::1", 5)),
        ("[::1]", ("::1", SENTINEL_PORT)),
    ],
)
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", ":1", "h:x", "h:0", "h:70000", "[::1", "[::1]x"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_sentinel_url() -> None:
    target = redis_settings(
        {"enabled": True, "redis_url": "redis+sentinel://:s%40cret@s1:26380,s2,[::1]:7/main/3"},
        PATH,
    ).target(PATH)
    assert target.sentinel == SentinelTarget("main", (("s1", 26380), ("s2", 26379), ("::1", 7)))
    assert (target.db, target.password, target.tls) == (3, "s@cret", False)
    assert "s@cret" not in repr(target)
    assert repr(target) == "RedisTarget(redis+sentinel://s1:26380,s2:26379,::1:7/main/3)"
    no_db = redis_settings({"redis_url": "redis+sentinel://s1/main"}, PATH).target(PATH)
    assert no_db.db == 0 and no_db.sentinel is not None


def test_sentinel_block() -> None:
    settings = redis_settings(
        {
            "enabled": True,
            "sentinel": {
                "master_name": "main",
                "addresses": ["s1:26379", "s2:26380"],
                "password": "sentinel-pw",
            },
            "redis_password": "data-pw",
            "redis_db": 2,
        },
        PATH,
    )
    target = settings.target(PATH)
    assert target.sentinel == SentinelTarget(
        "main", (("s1", 26379), ("s2", 26380)), None, "sentinel-pw"
    )
    assert (target.db, target.password) == (2, "data-pw")
    assert "sentinel-pw" not in repr(settings)


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"redis_url": "redis+sentinel://s1/"}, "cache.redis.redis_url"),
        ({"redis_url": "redis+sentinel://s1:x/main"}, "cache.redis.redis_url"),
        ({"redis_url": "redis+sentinel://s1,/main"}, "cache.redis.redis_url"),
        ({"redis_url": "redis+sentinel://s1/main/zero"}, "cache.redis.redis_url"),
        ({"redis_url": "redis+sentinel://s1/main?x=1"}, "cache.redis.redis_url"),
        ({"redis_url": "rediss+sentinel://s1/main"}, "cache.redis.redis_url"),
        ({"redis_url": "redis+sentinel://s1/main/1", "redis_db": 2}, "cache.redis.redis_db"),
        (
            {"redis_url": "redis+sentinel://s1/main", "tls_ca_file": "/etc/ssl/ca.pem"},
            "cache.redis.tls_ca_file",
        ),
        (
            {"redis_url": "redis://h", "sentinel": {"master_name": "m", "addresses": ["s"]}},
            "cache.redis.sentinel",
        ),
        ({"sentinel": {"master_name": "", "addresses": ["s"]}}, "cache.redis.sentinel.master_name"),
        ({"sentinel": {"master_name": "m", "addresses": []}}, "cache.redis.sentinel.addresses"),
        (
            {"sentinel": {"master_name": "m", "addresses": ["s:1", "s:port"]}},
            "cache.redis.sentinel.addresses[1]",
        ),
        ({"sentinel": {"master_name": "m"}}, "cache.redis.sentinel.addresses"),
        ({"sentinel": {"addresses": ["s"], "master_name": "m", "db": 1}}, f"{PATH}.sentinel.db"),
        ({"sentinel": "s1:26379"}, "cache.redis.sentinel"),
    ],
)
def test_bad_sentinel_settings_name_their_path(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        redis_settings({"enabled": True, **settings}, PATH)
    assert caught.value.path == path

"""
The Redis layer's logic on a fake clock: the adapter's timeouts and breaker (with a fake pool),
and the layer's TTLs, counters and purge events (with a fake adapter). The real thing, against
redis-server, is in ``tests/integration/test_cache_redis.py``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_turn_writes import Connection as TurnWritesSocket
from yatagarasu.cache import redis as redis_module
from yatagarasu.cache.redis import RedisCacheLayer, decode_entry, encode_entry, redis_settings
from yatagarasu.cache.redis_client import (
    BACKOFF_MAX,
    BIG_BULK,
    RedisClient,
    RedisCommandFailed,
    RedisScriptMissing,
    RedisTarget,
    RedisUnavailable,
    _PoolProtocol,
)
from yatagarasu.turn_writes import TurnWrites
from yatagarasu.values import CacheEntry, CacheKey

NOW = 1_800_000_000.0


def entry(body: bytes = b"hello", retain_until: float = NOW + 10_000) -> CacheEntry:
    return CacheEntry(
        headers=((b"etag", b'"e"'),),
        body=body,
        stored_at=NOW,
        expires_at=NOW + 60,
        retain_until=retain_until,
    )


# -- the adapter: timeouts and breaker ------------------------------------------------------


class FakeQueue:
    def __init__(self) -> None:
        self.peekers: list[Deferred[Any]] = []
        self.waiting: list[Deferred[Any]] = []
        self.pending: list[Any] = []  # no ready connection: commands go through the handler


class FakeHandler:
    """Stands for txredisapi's ConnectionHandler: ``mode`` says how commands end."""

    def __init__(self) -> None:
        self.mode = "hang"
        self.calls = 0

    def get(self, key: bytes) -> Deferred[Any]:
        self.calls += 1
        if self.mode == "hang":
            return Deferred()
        if self.mode == "refused":
            return fail(ConnectionRefusedError())
        return succeed(b"value")


class FakeFactory:
    def __init__(self) -> None:
        self.handler = FakeHandler()
        self.size = 1
        self.connections_made = 1
        self.connectionQueue = FakeQueue()

    def disconnect(self) -> Deferred[None]:
        return succeed(None)


class FakePoolTestCase(SynchronousTestCase):
    """A :class:`RedisClient` (timeout 0.5 s) whose pool is a :class:`FakeFactory`."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = RedisClient(
            RedisTarget("redis.invalid", 6379), self.clock, timeout=0.5, pool_size=2
        )
        self.pool = FakeFactory()
        self.client._factory = self.pool  # type: ignore[assignment]


class BreakerTests(FakePoolTestCase):
    def get(self) -> Deferred[bytes | None]:
        return self.client.get(b"k")

    def assert_fast_refusal(self) -> None:
        calls = self.pool.handler.calls
        failure = self.failureResultOf(self.get(), RedisUnavailable)
        self.assertTrue(failure.value.fast)
        self.assertEqual(self.pool.handler.calls, calls)

    def fail_once_by_timeout(self) -> None:
        self.pool.handler.mode = "hang"
        d = self.get()
        self.assertNoResult(d)
        self.clock.advance(0.5)
        failure = self.failureResultOf(d, RedisUnavailable)
        self.assertFalse(failure.value.fast)

    def test_calls_are_bounded_by_the_timeout_on_the_clock(self) -> None:
        d = self.get()
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, RedisUnavailable)
        self.assertFalse(self.client.healthy)

    def test_backoff_grows_and_one_probe_at_a_time(self) -> None:
        self.fail_once_by_timeout()
        self.assert_fast_refusal()
        self.clock.advance(1.0)
        probe = self.get()  # backoff over, a live connection: one probe
        self.assert_fast_refusal()
        self.clock.advance(0.5)
        self.failureResultOf(probe, RedisUnavailable)
        self.clock.advance(1.9)  # the backoff has doubled to 2 s
        self.assert_fast_refusal()
        self.clock.advance(0.1)
        self.pool.handler.mode = "ok"
        self.assertEqual(self.successResultOf(self.get()), b"value")
        self.assertTrue(self.client.healthy)
        self.assertEqual(self.successResultOf(self.get()), b"value")

    def test_a_cancelled_call_is_not_a_redis_failure(self) -> None:
        self.pool.handler.mode = "hang"
        d = self.get()
        d.cancel()  # the caller's client went away
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.client.healthy)
        self.pool.handler.mode = "ok"
        self.assertEqual(self.successResultOf(self.get()), b"value")  # no backoff

    def test_backoff_is_capped(self) -> None:
        for _ in range(12):
            self.fail_once_by_timeout()
            self.clock.advance(BACKOFF_MAX)
        self.fail_once_by_timeout()
        self.clock.advance(BACKOFF_MAX - 0.1)
        self.assert_fast_refusal()
        self.clock.advance(0.1)
        self.pool.handler.mode = "ok"
        self.successResultOf(self.get())

    def test_no_connection_means_no_call_until_the_pool_reconnects(self) -> None:
        self.pool.handler.mode = "refused"
        self.failureResultOf(self.get(), RedisUnavailable)
        self.pool.size = 0
        self.clock.advance(10)
        self.assert_fast_refusal()  # backoff over, but nothing to talk to
        self.pool.size = 1
        self.pool.connections_made += 1  # Redis is back: probe at once
        self.pool.handler.mode = "ok"
        self.successResultOf(self.get())

    def test_a_reconnection_restarts_the_backoff_and_its_failed_probe_does_not_double_it(
        self,
    ) -> None:
        for _ in range(4):  # backoff now 16 s
            self.fail_once_by_timeout()
            self.clock.advance(BACKOFF_MAX)
        self.fail_once_by_timeout()
        self.clock.advance(1.0)
        self.assert_fast_refusal()  # within the 16 s backoff
        self.pool.connections_made += 1  # the pool reconnected: probe at once...
        self.fail_once_by_timeout()  # ... which times out (a loaded machine)
        self.clock.advance(0.9)
        self.assert_fast_refusal()
        self.clock.advance(0.1)  # 1 s (BACKOFF_INITIAL) later, not 16 or 32 s
        self.pool.handler.mode = "ok"
        self.assertEqual(self.successResultOf(self.get()), b"value")
        self.assertTrue(self.client.healthy)

    def test_calls_under_way_do_not_double_the_backoff(self) -> None:
        first, second = self.get(), self.get()
        self.clock.advance(0.5)
        self.failureResultOf(first, RedisUnavailable)
        self.failureResultOf(second, RedisUnavailable)
        self.clock.advance(1.0)  # still the first backoff (1 s), not 2 s
        self.pool.handler.mode = "ok"
        self.successResultOf(self.get())

    def test_closed_client_refuses_at_once(self) -> None:
        self.successResultOf(self.client.close())
        self.assert_fast_refusal()


# -- the layer, on a fake adapter -----------------------------------------------------------


class ReadyConnection:
    """A pool connection that is up: answers GET itself; BLPOP holds it (a blocking command)."""

    def __init__(self, transport: Any = None) -> None:
        self.connected = 1
        self.calls = 0
        self.transport = transport

    def get(self, key: bytes) -> Deferred[Any]:
        self.calls += 1
        if self.transport is not None:
            self.transport.write(b"GET\r\n")
        return succeed(b"direct")

    @txredisapi._blocking_command(True)  # type: ignore[misc]
    def blpop(self, keys: list[bytes], timeout: int) -> Deferred[Any]:
        raise AssertionError("a blocking command must go through the handler")


class SendTests(SynchronousTestCase):
    """Commands go to a ready pool connection directly; the handler when there is none."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = RedisClient(
            RedisTarget("redis.invalid", 6379), self.clock, timeout=0.5, pool_size=2
        )
        self.pool = FakeFactory()
        self.pool.handler.mode = "ok"
        self.client._factory = self.pool  # type: ignore[assignment]

    def test_replies_are_parsed_by_hiredis(self) -> None:
        assert issubclass(txredisapi.RedisFactory.protocol, txredisapi.HiredisProtocol)

    def test_a_ready_connection_gets_the_command_directly(self) -> None:
        conn = ReadyConnection()
        self.pool.connectionQueue.pending.append(conn)
        self.assertEqual(self.successResultOf(self.client.get(b"k")), b"direct")
        self.assertEqual((conn.calls, self.pool.handler.calls), (1, 0))

    def test_ready_connections_take_the_commands_in_turn(self) -> None:
        connections = [ReadyConnection() for _ in range(3)]
        self.pool.connectionQueue.pending.extend(connections)
        for _ in range(6):
            self.assertEqual(self.successResultOf(self.client.get(b"k")), b"direct")
        self.assertEqual([conn.calls for conn in connections], [2, 2, 2])
        self.assertEqual(self.pool.handler.calls, 0)

    def test_a_turns_commands_go_to_one_connection_the_next_turns_to_the_next(self) -> None:
        reactor = MemoryReactorClock()
        turn_writes = TurnWrites(reactor)
        sockets = [TurnWritesSocket(turn_writes, reactor) for _ in range(3)]
        connections = [ReadyConnection(s.transport) for s in sockets]
        self.pool.connectionQueue.pending.extend(connections)
        for _ in range(4):  # one turn: one connection written to, sent once at its end
            self.assertEqual(self.successResultOf(self.client.get(b"k")), b"direct")
        self.assertEqual(sorted(conn.calls for conn in connections), [0, 0, 4])
        first = next(conn for conn in connections if conn.calls)
        reactor.advance(0)  # the turn ends
        for _ in range(2):
            self.successResultOf(self.client.get(b"k"))
        self.assertEqual(sorted(conn.calls for conn in connections), [0, 2, 4])
        self.assertEqual(first.calls, 4)
        reactor.advance(0)
        received = [s.pending() for s in sockets]
        self.assertEqual(sorted(received), [b"", b"GET\r\n" * 2, b"GET\r\n" * 4])
        for s in sockets:
            s.close()

    def test_a_dead_connection_leaves_the_command_to_the_handler(self) -> None:
        conn = ReadyConnection()
        conn.connected = 0
        self.pool.connectionQueue.pending.append(conn)
        self.assertEqual(self.successResultOf(self.client.get(b"k")), b"value")
        self.assertEqual((conn.calls, self.pool.handler.calls), (0, 1))

    def test_a_blocking_command_goes_through_the_handler(self) -> None:
        self.pool.connectionQueue.pending.append(ReadyConnection())
        self.pool.handler.blpop = lambda keys, timeout: succeed([b"q", b"v"])  # type: ignore[attr-defined]
        reply = self.client._call("blpop", [b"q"], 0)
        self.assertEqual(self.successResultOf(reply), [b"q", b"v"])


def pool_protocol() -> tuple[_PoolProtocol, StringTransport]:
    """A pool connection as the pool makes it (bytes, no number conversion), "connected"."""
    proto = _PoolProtocol(charset=None, convertNumbers=False)
    transport = StringTransport()
    proto.transport = transport
    proto.connected = 1
    return proto, transport


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class PoolProtocolTests(SynchronousTestCase):
    """Large bulk replies read without hiredis; everything else through it; order kept."""

    big = bytes(range(256)) * (BIG_BULK // 256 + 3)
    stream = (
        b"+OK\r\n"
        + bulk(big)
        + bulk(b"abc")
        + b"$-1\r\n"
        + bulk(big[::-1])
        + b":5\r\n"
        + b"-ERR bad\r\n"
        + bulk(big[:BIG_BULK])
        + b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    )

    def replies(self, chunk_size: int) -> list[Any]:
        proto, _ = pool_protocol()
        got: list[Any] = []
        proto.replyReceived = got.append  # type: ignore[method-assign]
        data = self.stream
        for i in range(0, len(data), chunk_size):
            proto.dataReceived(data[i : i + chunk_size])
        return got

    def test_replies_arrive_whole_and_in_order_however_the_bytes_are_cut(self) -> None:
        for chunk_size in (1, 2, 3, 5, 1000, BIG_BULK - 1, BIG_BULK + 7, len(self.stream)):
            got = self.replies(chunk_size)
            self.assertEqual(len(got), 9, chunk_size)
            self.assertIsInstance(got[6], txredisapi.ResponseError)
            got[6] = "error"
            self.assertEqual(
                got,
                [
                    b"OK",
                    self.big,
                    b"abc",
                    None,
                    self.big[::-1],
                    5,
                    "error",
                    self.big[:BIG_BULK],
                    [b"a", b"b"],
                ],
                chunk_size,
            )
            # a value cut across reads is joined (bytes); one read whole is a view of it
            whole = chunk_size == len(self.stream)
            self.assertIs(type(got[1]), memoryview if whole else bytes, chunk_size)

    def test_a_large_bulk_reply_read_in_one_piece_is_a_view_of_that_read(self) -> None:
        proto, _ = pool_protocol()
        got: list[Any] = []
        proto.replyReceived = got.append  # type: ignore[method-assign]
        data = bulk(self.big) + bulk(b"next")
        proto.dataReceived(data)
        self.assertEqual(got, [self.big, b"next"])
        self.assertIs(got[0].obj, data)  # no copy of the value

    def test_a_large_bulk_reply_does_not_go_through_hiredis(self) -> None:
        fed: list[bytes] = []
        self.patch(txredisapi.HiredisProtocol, "dataReceived", lambda self, data: fed.append(data))
        proto, _ = pool_protocol()
        got: list[Any] = []
        proto.replyReceived = got.append  # type: ignore[method-assign]
        data = bulk(self.big)
        for i in range(0, len(data), 4096):
            proto.dataReceived(data[i : i + 4096])
        self.assertEqual((got, fed), ([self.big], []))
        proto.dataReceived(bulk(b"small"))
        self.assertEqual(fed, [bulk(b"small")])

    def test_large_bulk_replies_among_pipelined_ones_do_not_go_through_hiredis(self) -> None:
        fed: list[bytes] = []
        real = txredisapi.HiredisProtocol.dataReceived

        def feeding(proto: Any, data: bytes) -> None:
            fed.append(data)
            real(proto, data)

        self.patch(txredisapi.HiredisProtocol, "dataReceived", feeding)
        proto, _ = pool_protocol()
        got: list[Any] = []
        proto.replyReceived = got.append  # type: ignore[method-assign]
        small = b"+OK\r\n" + bulk(b"abc") + b":7\r\n" + b"$-1\r\n"
        proto.dataReceived(small + bulk(self.big) + small + bulk(self.big[::-1]))
        self.assertEqual(
            got, [b"OK", b"abc", 7, None, self.big, b"OK", b"abc", 7, None, self.big[::-1]]
        )
        self.assertEqual(fed, [b"+OK\r\n", bulk(b"abc"), b":7\r\n", b"$-1\r\n"] * 2)

    def test_a_bulk_reply_not_ended_by_crlf_is_a_protocol_error(self) -> None:
        proto, _ = pool_protocol()
        bad = b"$%d\r\n%sXY" % (len(self.big), self.big)
        self.assertRaises(txredisapi.InvalidData, proto.dataReceived, bad)

    def test_lean_get_sends_get_and_takes_its_reply_in_turn(self) -> None:
        proto, transport = pool_protocol()
        clock = Clock()
        first = proto.lean_get(b"k:1", clock, 1.0)
        second = proto.lean_get(b"k2", clock, 1.0)
        self.assertEqual(
            transport.value(), b"*2\r\n$3\r\nGET\r\n$3\r\nk:1\r\n*2\r\n$3\r\nGET\r\n$2\r\nk2\r\n"
        )
        first.cancel()  # its caller left: the reply owed to it must not go to the next one
        self.failureResultOf(first, CancelledError)
        proto.dataReceived(bulk(b"one") + bulk(self.big))
        self.assertEqual(self.successResultOf(second), self.big)
        third = proto.lean_get(b"k3", clock, 1.0)
        self.assertNoResult(third)
        proto.dataReceived(b"-ERR nope\r\n")
        self.failureResultOf(third, txredisapi.ResponseError)

    def test_lean_gets_and_other_commands_take_their_replies_in_order(self) -> None:
        proto, _ = pool_protocol()
        clock = Clock()
        first = proto.lean_get(b"a", clock, 1.0)
        pinged = proto.execute_command("PING")
        second = proto.lean_get(b"b", clock, 1.0)
        proto.dataReceived(bulk(b"A") + b"+PONG\r\n")
        self.assertEqual(self.successResultOf(first), b"A")
        self.assertEqual(self.successResultOf(pinged), b"PONG")
        self.assertNoResult(second)
        proto.dataReceived(bulk(self.big))
        self.assertEqual(self.successResultOf(second), self.big)
        self.assertFalse(proto.replyQueue.waiting)

    def test_a_reply_nobody_asked_for_goes_to_the_next_get(self) -> None:
        proto, _ = pool_protocol()
        proto.dataReceived(bulk(b"stray"))  # as txredisapi does: kept for the next taker
        self.assertEqual(self.successResultOf(proto.lean_get(b"k", Clock(), 1.0)), b"stray")
        self.assertFalse(proto._owed)


class LeanGetTests(FakePoolTestCase):
    """The client sends GET by ``lean_get`` on a ready pool connection, bounded by its timeout."""

    def setUp(self) -> None:
        super().setUp()
        self.conn, self.transport = pool_protocol()
        self.pool.connectionQueue.pending.append(self.conn)

    def test_get_goes_by_lean_get(self) -> None:
        d = self.client.get(b"k")
        self.assertEqual(self.transport.value(), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        self.conn.dataReceived(bulk(b"v"))
        self.assertEqual(self.successResultOf(d), b"v")
        self.assertEqual(self.pool.handler.calls, 0)
        self.clock.advance(0.5)  # the deadline timer finds nothing owed and stops
        self.assertFalse(self.clock.getDelayedCalls())
        self.assertFalse(self.transport.disconnecting)

    def test_each_get_has_its_own_deadline_on_one_timer(self) -> None:
        first = self.client.get(b"a")
        self.clock.advance(0.3)
        second = self.client.get(b"b")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.conn.dataReceived(bulk(b"A"))
        self.assertEqual(self.successResultOf(first), b"A")
        self.clock.advance(0.2)  # the first deadline passed; the second is 0.3 s away
        self.assertNoResult(second)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.29)
        self.assertNoResult(second)
        self.clock.advance(0.01)
        self.failureResultOf(second, RedisUnavailable)
        self.assertTrue(self.transport.disconnecting)

    def test_a_lost_connection_fails_the_owed_gets_and_stops_the_timer(self) -> None:
        d = self.client.get(b"k")
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, RedisUnavailable)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_a_timed_out_get_drops_its_connection(self) -> None:
        d = self.client.get(b"k")
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.01)
        failure = self.failureResultOf(d, RedisUnavailable)
        self.assertIn("timed out", str(failure.value))
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.client.healthy)

    def test_an_error_reply_is_a_command_failure(self) -> None:
        d = self.client.get(b"k")
        self.conn.dataReceived(b"-WRONGTYPE Operation against a key\r\n")
        self.failureResultOf(d, RedisCommandFailed)
        self.assertTrue(self.client.healthy)


class FakeClient:
    """An in-memory stand-in for :class:`RedisClient` (no TTL expiry; TTLs are recorded)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.ttls: dict[bytes, int] = {}
        self.published: list[tuple[bytes, bytes]] = []
        self.on_message: Callable[[bytes], None] | None = None
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise RedisUnavailable("down")

    def get(self, key: bytes) -> Deferred[bytes | None]:
        try:
            self._check()
        except RedisUnavailable:
            return fail()
        return succeed(self.data.get(key))

    async def setex(self, key: bytes, ttl: int, value: bytes) -> None:
        self._check()
        self.data[key] = value
        self.ttls[key] = ttl

    async def delete(self, keys: Sequence[bytes]) -> int:
        self._check()
        return sum(self.data.pop(k, None) is not None for k in keys)

    async def scan(self, cursor: bytes, match: bytes, count: int) -> tuple[bytes, list[bytes]]:
        self._check()
        pattern = match.decode().replace("\\*", "\0").replace("\\", "")
        found = [
            k
            for k in self.data
            if fnmatch.fnmatchcase(k.decode(), pattern.replace("[", "[[]").replace("\0", "[*]"))
        ]
        return b"0", found

    async def publish(self, channel: bytes, message: bytes) -> int:
        self._check()
        self.published.append((channel, message))
        return 1

    def subscriber(self, channel: bytes, on_message: Callable[[bytes], None]) -> Service:
        self.on_message = on_message
        return Service()

    def close(self) -> Deferred[None]:
        return succeed(None)


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.fake = FakeClient()
        settings = redis_settings(
            {"enabled": True, "redis_url": "redis://h", "ttl_seconds": 100}, "cache.redis"
        )
        self.layer = RedisCacheLayer(settings, self.clock, client=self.fake)  # type: ignore[arg-type]

    def test_ttl_is_min_of_setting_and_retention(self) -> None:
        self.successResultOf(self.layer.set(CacheKey("b", "long"), entry()))
        self.successResultOf(self.layer.set(CacheKey("b", "short"), entry(retain_until=NOW + 9.2)))
        ttls = {k.decode().rsplit(":", 1)[1]: v for k, v in self.fake.ttls.items()}
        self.assertEqual(ttls, {"long": 100, "short": 10})

    def test_counters_follow_the_ttl_this_instance_set(self) -> None:
        self.successResultOf(self.layer.set(CacheKey("b", "short"), entry(retain_until=NOW + 10)))
        self.successResultOf(self.layer.set(CacheKey("b", "long"), entry()))
        self.assertEqual(self.layer.stats("b").current_item_count, 2)
        self.clock.advance(10)
        self.assertEqual(self.layer.stats("b").current_item_count, 1)
        self.clock.advance(90)
        self.assertEqual(self.layer.stats(None).current_item_count, 0)
        self.assertEqual(self.layer.stats(None).current_size_bytes, 0)

    def test_failures_are_counted_misses_and_no_ops(self) -> None:
        self.fake.down = True
        key = CacheKey("b", "k")
        self.assertIsNone(self.successResultOf(self.layer.get(key)))
        self.successResultOf(self.layer.set(key, entry()))
        self.assertFalse(self.successResultOf(self.layer.delete(key)))
        self.assertEqual(self.successResultOf(self.layer.purge(None, None)), 0)
        self.assertEqual(self.layer.errors, 4)
        self.assertEqual(self.layer.stats("b").misses, 1)

    def test_delete_and_purge_publish_events(self) -> None:
        self.successResultOf(self.layer.delete(CacheKey("b", "k")))
        self.successResultOf(self.layer.purge("b", "p/"))
        self.successResultOf(self.layer.purge(None, "ignored"))
        events = [json.loads(m) for c, m in self.fake.published]
        self.assertEqual({c for c, m in self.fake.published}, {b"yatagarasu:purge"})
        self.assertEqual(
            [(e["bucket"], e["prefix"], e["key"]) for e in events],
            [("b", None, "k"), ("b", "p/", None), (None, None, None)],
        )
        self.assertEqual({e["origin"] for e in events}, {self.layer.instance_id})

    def test_remote_events_reach_the_callback_but_not_own_or_malformed_ones(self) -> None:
        received: list[tuple[str | None, str | None, str | None]] = []
        self.layer.subscribe_purges(lambda *event: received.append(event))
        deliver = self.fake.on_message
        assert deliver is not None
        self.successResultOf(self.layer.set(CacheKey("b", "k"), entry()))
        self.successResultOf(self.layer.set(CacheKey("b", "p/1"), entry()))

        def event(origin: str, bucket: Any, prefix: Any, key: Any) -> bytes:
            doc = {"origin": origin, "bucket": bucket, "prefix": prefix, "key": key}
            return json.dumps(doc).encode()

        deliver(event(self.layer.instance_id, "b", None, "k"))
        deliver(b"{not json")
        deliver(event("other", 1, None, None))
        self.assertEqual(received, [])
        self.assertEqual(self.layer.stats("b").current_item_count, 2)
        deliver(event("other", "b", None, "k"))
        self.assertEqual(self.layer.stats("b").current_item_count, 1)
        deliver(event("other", "b", "p/", None))
        self.assertEqual(self.layer.stats("b").current_item_count, 0)
        self.assertEqual(received, [("b", None, "k"), ("b", "p/", None)])

    def test_a_failing_callback_is_logged(self) -> None:
        self.layer.subscribe_purges(lambda *event: 1 / 0)
        assert self.fake.on_message is not None
        self.fake.on_message(b'{"origin": "x", "bucket": null, "prefix": null, "key": null}')
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_file_bodies_and_large_bodies_are_declined(self) -> None:
        key = CacheKey("b", "big")
        self.successResultOf(self.layer.set(key, entry(b"x" * (self.layer.max_item_size + 1))))
        self.assertEqual(self.fake.data, {})
        self.assertIsNone(self.layer.open_writer(key))

    def test_values_keep_floats_exact(self) -> None:
        stored = entry()
        self.assertEqual(decode_entry(encode_entry(stored)), stored)

    def test_hits_on_the_same_headers_share_their_encoded_head_lines(self) -> None:
        first, second = CacheKey("b", "1"), CacheKey("b", "2")
        self.successResultOf(self.layer.set(first, entry(b"one")))
        self.successResultOf(self.layer.set(second, entry(b"two")))
        hits = [self.successResultOf(self.layer.get(k)) for k in (first, second, first)]
        assert all(hit is not None for hit in hits)
        heads = [hit.head_lines for hit in hits if hit is not None]
        self.assertEqual(heads[0], b'ETag: "e"\r\n')
        self.assertIs(heads[1], heads[0])
        self.assertIs(heads[2], heads[0])
        other = CacheKey("b", "3")
        self.successResultOf(
            self.layer.set(other, CacheEntry(((b"etag", b'"f"'),), b"x", NOW, NOW + 60, NOW + 99))
        )
        hit = self.successResultOf(self.layer.get(other))
        assert hit is not None
        self.assertEqual(hit.head_lines, b'ETag: "f"\r\n')

    def test_the_kept_head_lines_are_bounded(self) -> None:
        self.patch(redis_module, "HEADS_KEPT", 2)
        for i in range(5):
            key = CacheKey("b", str(i))
            headers = ((b"etag", b'"%d"' % i),)
            self.successResultOf(
                self.layer.set(key, CacheEntry(headers, b"x", NOW, NOW + 60, NOW + 99))
            )
            hit = self.successResultOf(self.layer.get(key))
            assert hit is not None
            self.assertEqual(hit.head_lines, b'ETag: "%d"\r\n' % i)
            self.assertLessEqual(len(self.layer._heads), 2)


class ScriptHandler(FakeHandler):
    """Knows one script once loaded; EVALSHA of an unknown one fails as txredisapi does."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, bytes] = {}

    def script_load(self, script: bytes) -> Deferred[Any]:
        sha = hashlib.sha1(script).hexdigest()
        self.scripts[sha] = script
        return succeed(sha.encode())

    def evalsha(self, sha: str, keys: list[bytes], args: list[bytes]) -> Deferred[Any]:
        if sha not in self.scripts:
            return fail(txredisapi.ScriptDoesNotExist(f"No script matching hash: {sha} found"))
        return succeed([len(keys), len(args)])


class ScriptTests(SynchronousTestCase):
    def test_noscript_is_its_own_error_and_not_a_redis_failure(self) -> None:
        client = RedisClient(RedisTarget("redis.invalid", 6379), Clock(), timeout=0.5, pool_size=1)
        pool = FakeFactory()
        pool.handler = ScriptHandler()
        client._factory = pool  # type: ignore[assignment]
        sha = hashlib.sha1(b"return 1").hexdigest().encode()
        missing = Deferred.fromCoroutine(client.evalsha(sha, [b"k"], [b"a", b"b"]))
        self.failureResultOf(missing, RedisScriptMissing)
        self.assertTrue(client.healthy)  # Redis answered
        loaded = Deferred.fromCoroutine(client.script_load(b"return 1"))
        self.assertEqual(self.successResultOf(loaded), sha)
        ran = Deferred.fromCoroutine(client.evalsha(sha, [b"k"], [b"a", b"b"]))
        self.assertEqual(self.successResultOf(ran), [1, 2])


def test_malformed_values_are_refused() -> None:
    """Every field's type is checked (the decoder is on the hit path, written for speed)."""
    import msgpack  # type: ignore[import-untyped,unused-ignore]

    good = {"v": 1, "h": [[b"etag", b'"e"']], "b": b"x", "s": 1.0, "e": 2, "r": 3.0, "n": False}
    assert decode_entry(msgpack.packb(good, use_bin_type=True)).expires_at == 2.0
    bad_fields: list[dict[str, Any]] = [
        {"v": 2},
        {"h": [[b"etag"]]},
        {"h": [[b"etag", b"x", b"y"]]},
        {"h": [["etag", b"x"]]},
        {"h": {b"etag": b"x"}},
        {"b": "text"},
        {"n": 0},
        {"s": True},
        {"r": "3"},
        {"e": None},
    ]
    for change in bad_fields:
        raw = msgpack.packb({**good, **change}, use_bin_type=True)
        try:
            decode_entry(raw)
        except ValueError:
            continue
        raise AssertionError(f"accepted {change}")

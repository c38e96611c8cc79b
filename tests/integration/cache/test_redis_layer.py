"""The ``redis`` cache layer against a real, private redis-server (killed, frozen, restarted)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_twisted
from twisted.internet import task
from zope.interface.verify import verifyObject

from devharness.certificates import write_self_signed
from devharness.ports import free_port
from devharness.redis_server import RedisServer
from yatagarasu import discovery, plugins
from yatagarasu.cache.redis import (
    RedisCacheLayer,
    RedisLayerFactory,
    decode_entry,
    encode_entry,
    glob_escape,
    redis_settings,
)
from yatagarasu.cache.redis_client import BACKOFF_MAX, READ_SIZE, RECONNECT_MAX_DELAY
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import ICacheLayerFactory
from yatagarasu.testing import FAR_FUTURE, CacheLayerContract
from yatagarasu.testing import sample_entry as entry
from yatagarasu.values import CacheKey

pytestmark = pytest.mark.integration

PATH = "cache.redis"


def make_layer(url: str, reactor: Any, **settings: Any) -> RedisCacheLayer:
    return RedisLayerFactory().build({"enabled": True, "redis_url": url, **settings}, PATH, reactor)


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def eventually(
    reactor: Any, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1
) -> None:
    """Await ``check()`` (sync or async) until it is true, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s")
        await sleep(reactor, interval)


def ttl_of(server: RedisServer, layer: RedisCacheLayer, key: CacheKey) -> int:
    reply = server.command("TTL", layer.redis_key(key).decode("utf-8"))
    assert reply.startswith(b":"), reply
    return int(reply[1:])


@pytest_twisted.async_yield_fixture
async def layer(redis_server: RedisServer, reactor: Any) -> AsyncIterator[RedisCacheLayer]:
    made = make_layer(redis_server.url, reactor)
    yield made
    await made.close()


class TestContract(CacheLayerContract):
    """The shared layer contract, on a real Redis."""

    @pytest.fixture(autouse=True)
    def _bind(self, layer: RedisCacheLayer) -> None:
        self.layer = layer


# -- configuration and plugin ---------------------------------------------------------------


def test_plugin_is_discovered() -> None:
    plugin = discovery.find(ICacheLayerFactory, "redis", "cache.cache_layers[2]", plugins)
    assert plugin.name == "redis"
    assert verifyObject(ICacheLayerFactory, plugin)


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"enabled": True}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": "http://127.0.0.1:6379"}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": "redis://127.0.0.1:port"}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": "redis:///0"}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": "redis://h:6379/zero"}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": "redis://h:6379/0?x=1"}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": 6379}, "cache.redis.redis_url"),
        ({"enabled": True, "redis_url": "redis://h/1", "redis_db": 2}, "cache.redis.redis_db"),
        (
            {"enabled": True, "redis_url": "redis://:a@h", "redis_password": "b"},
            "cache.redis.redis_password",
        ),
        ({"enabled": True, "redis_url": "redis://h", "ttl_seconds": 0}, "cache.redis.ttl_seconds"),
        (
            {"enabled": True, "redis_url": "redis://h", "redis_ttl_seconds": "1h"},
            "cache.redis.redis_ttl_seconds",
        ),
        ({"enabled": True, "redis_url": "redis://h", "timeout_ms": 0}, "cache.redis.timeout_ms"),
        ({"enabled": True, "redis_url": "redis://h", "pool_size": 0}, "cache.redis.pool_size"),
        (
            {"enabled": True, "redis_url": "redis://h", "max_item_size_mb": -1},
            "cache.redis.max_item_size_mb",
        ),
        (
            {"enabled": True, "redis_url": "redis://h", "key_prefix": "a", "redis_key_prefix": "b"},
            "cache.redis.redis_key_prefix",
        ),
        ({"enabled": True, "redis_url": "redis://h", "bogus": 1}, "cache.redis.bogus"),
        ({"redis_url": "redis://h"}, "cache.redis.enabled"),
        ({"enabled": "yes", "redis_url": "redis://h"}, "cache.redis.enabled"),
    ],
)
def test_factory_rejects_bad_settings(settings: dict[str, Any], path: str, reactor: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisLayerFactory().build(settings, PATH, reactor)
    assert caught.value.path == path


def test_disabled_section_is_not_validated_further() -> None:
    # The seed's example: ``enabled: false`` with an unset ${REDIS_URL}.
    parsed = redis_settings({"enabled": False, "redis_url": ""}, PATH)
    assert parsed.enabled is False


def test_settings_seed_spellings_and_url_parts(reactor: Any) -> None:
    layer = RedisLayerFactory().build(
        {
            "redis_enabled": True,
            "redis_url": "rediss://user:s%40cret@cache.example:6380/3",
            "redis_key_prefix": "edge:",
            "redis_ttl_seconds": 60,
        },
        PATH,
        reactor,
    )
    target = layer.target
    assert (target.host, target.port, target.tls, target.db) == ("cache.example", 6380, True, 3)
    assert (target.username, target.password) == ("user", "s@cret")
    assert layer.settings.key_prefix == "edge:"
    assert layer.settings.ttl_seconds == 60
    assert layer.max_item_size == 10 * 1024 * 1024
    assert layer.channel == b"edge:purge"
    assert "s@cret" not in repr(target)
    assert "s@cret" not in repr(layer.settings)
    # Nothing connects in build().
    assert layer.client.started is False
    defaults = make_layer("redis://h", reactor)
    assert defaults.target.db == 0 and defaults.target.password is None
    assert defaults.settings.key_prefix == "yatagarasu:"
    assert defaults.settings.ttl_seconds == 3600
    assert defaults.settings.timeout_ms == 500
    explicit = make_layer("redis://:pw@h", reactor, redis_db=5, redis_password="pw")
    assert (explicit.target.db, explicit.target.password) == (5, "pw")


def test_key_layout(reactor: Any) -> None:
    layer = make_layer("redis://h", reactor, key_prefix="p:")
    assert layer.redis_key(CacheKey("products", "img/1.jpg")) == b"p:obj:products::img/1.jpg"
    assert layer.redis_key(CacheKey("a:b", "k:1")) == b"p:obj:a%3Ab::k:1"
    assert layer.redis_key(CacheKey("b", "k", "gz")) == b"p:obj:b:gz:k"
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


def test_values_roundtrip_without_redis() -> None:
    stored = entry(bytes(range(256)), revalidate=True)
    assert decode_entry(encode_entry(stored)) == stored
    with pytest.raises(ValueError):
        decode_entry(b"\xc1 not msgpack")
    with pytest.raises(ValueError):
        decode_entry(msgpack.packb({"v": 1, "h": "x"}))


# -- against redis-server -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_setex_ttl_is_bounded_by_settings_and_retention(
    redis_server: RedisServer, reactor: Any
) -> None:
    layer = make_layer(redis_server.url, reactor, ttl_seconds=600)
    try:
        far, soon, gone = CacheKey("b", "far"), CacheKey("b", "soon"), CacheKey("b", "gone")
        before = reactor.seconds()
        await layer.set(far, entry(retain_until=FAR_FUTURE))
        await layer.set(soon, entry(retain_until=reactor.seconds() + 100))
        far_ttl, soon_ttl = ttl_of(redis_server, layer, far), ttl_of(redis_server, layer, soon)
        # Redis counts down from the TTL set; allow what has passed since (a loaded machine).
        passed = reactor.seconds() - before
        assert 600 - passed - 1 <= far_ttl <= 600
        assert 100 - passed - 1 <= soon_ttl <= 100
        # No time left: not written, and an old value under the key is removed.
        await layer.set(gone, entry(retain_until=FAR_FUTURE))
        await layer.set(gone, entry(retain_until=reactor.seconds() - 1))
        assert ttl_of(redis_server, layer, gone) == -2
        assert layer.stats("b").current_item_count == 2
    finally:
        await layer.close()


@pytest_twisted.ensureDeferred
async def test_values_are_msgpack_with_bytes_intact(layer: RedisCacheLayer) -> None:
    key = CacheKey("b", "bin")
    body = bytes(range(256)) * 10
    headers = ((b"content-type", b"application/octet-stream"), (b"etag", b'"\xff\x00"'))
    await layer.set(key, entry(body, headers=headers))
    raw = await layer.client.get(layer.redis_key(key))
    assert raw is not None
    doc = msgpack.unpackb(raw, raw=False)
    assert doc["b"] == body and isinstance(doc["b"], bytes)
    assert [tuple(h) for h in doc["h"]] == list(headers)
    assert doc["r"] == FAR_FUTURE and doc["n"] is False


@pytest_twisted.ensureDeferred
async def test_large_values_through_the_pool_connections(layer: RedisCacheLayer) -> None:
    """A 300 KB value comes back whole, read from the connections READ_SIZE bytes at a time."""
    key = CacheKey("b", "large")
    body = os.urandom(300_000)
    await layer.set(key, entry(body))
    for _ in range(3):
        found = await layer.get(key)
        assert found is not None and found.body == body
    factory = layer.client._factory
    assert factory is not None and factory.pool
    assert {conn.transport.bufferSize for conn in factory.pool} == {READ_SIZE}


@pytest_twisted.ensureDeferred
async def test_undecodable_value_is_a_counted_miss(
    layer: RedisCacheLayer, redis_server: RedisServer
) -> None:
    key = CacheKey("b", "junk")
    assert redis_server.command("SET", layer.redis_key(key).decode(), "not msgpack") == b"+OK"
    assert await layer.get(key) is None
    assert layer.errors == 1
    assert layer.stats("b").misses == 1
    # The bad value is removed.
    assert ttl_of(redis_server, layer, key) == -2


@pytest_twisted.ensureDeferred
async def test_keys_with_glob_characters_purge_exactly(
    layer: RedisCacheLayer, redis_server: RedisServer
) -> None:
    keys = [
        CacheKey("b*", "x"),
        CacheKey("bx", "x"),
        CacheKey("a", "x"),
        CacheKey("a:b", "x"),
        CacheKey("a", "pre*fix/1"),
        CacheKey("a", "prefix/1"),
        CacheKey("a", "pre?/1"),
        CacheKey("a", "[ab]/1"),
        CacheKey("a", "a/1"),
        CacheKey("a", "back\\slash"),
        CacheKey("a", "backslash"),
        CacheKey("a", "other:pre*fix"),
    ]
    for key in keys:
        await layer.set(key, entry())

    async def present() -> set[CacheKey]:
        return {k for k in keys if await layer.get(k) is not None}

    assert await layer.purge("a", "pre*") == 1
    assert CacheKey("a", "pre*fix/1") not in await present()
    assert CacheKey("a", "prefix/1") in await present()
    assert await layer.purge("a", "[ab]") == 1
    assert CacheKey("a", "a/1") in await present()
    assert await layer.purge("a", "back\\") == 1
    assert CacheKey("a", "backslash") in await present()
    assert await layer.purge("a", "pre?") == 1
    assert await layer.purge("b*", None) == 1
    assert CacheKey("bx", "x") in await present()
    # "a" is not a prefix of the bucket "a:b".
    assert await layer.purge("a", None) == 5
    assert await present() == {CacheKey("bx", "x"), CacheKey("a:b", "x")}
    # Other data in the database is never touched.
    assert redis_server.command("SET", "unrelated", "1") == b"+OK"
    assert redis_server.command("SET", "other:obj:a::x", "1") == b"+OK"
    assert await layer.purge(None, None) == 2
    assert redis_server.command("EXISTS", "unrelated") == b":1"
    assert redis_server.command("EXISTS", "other:obj:a::x") == b":1"
    assert layer.stats(None).current_item_count == 0


@pytest_twisted.ensureDeferred
async def test_redis_killed_then_restarted(
    layer: RedisCacheLayer, redis_server: RedisServer, reactor: Any
) -> None:
    key = CacheKey("b", "k")
    await layer.set(key, entry(b"before"))
    assert await layer.get(key) is not None
    redis_server.kill()
    # Each call ends (by timeout_ms, or refused at once): the bound itself is asserted on a fake
    # clock in unit/test_cache_redis_logic.py, not timed here.
    assert await layer.get(key) is None
    await layer.set(key, entry(b"during"))
    assert await layer.delete(key) is False
    assert await layer.purge("b", None) == 0
    await layer.publish_purge("b", None, None)
    assert layer.errors >= 1
    assert layer.client.healthy is False
    # Many calls while down return at once (the breaker), without queueing on the pool.
    for _ in range(50):
        assert await layer.get(key) is None
    assert layer.client.waiting <= 2
    redis_server.restart()

    async def works_again() -> bool:
        await layer.set(key, entry(b"after"))
        found = await layer.get(key)
        return found is not None and found.body == b"after"

    # The pool reconnects within RECONNECT_MAX_DELAY (plus txredisapi's jitter, well under 2x),
    # and a reconnection lets a probe through at once; should that probe fail (a loaded
    # machine), the next comes BACKOFF_INITIAL later, and any later one within BACKOFF_MAX.
    await eventually(reactor, works_again, timeout=2 * RECONNECT_MAX_DELAY + 2 * BACKOFF_MAX)
    assert layer.client.healthy


@pytest_twisted.ensureDeferred
async def test_redis_frozen_calls_time_out_as_misses(
    layer: RedisCacheLayer, redis_server: RedisServer, reactor: Any
) -> None:
    key = CacheKey("b", "k")
    await layer.set(key, entry(b"v"))
    redis_server.freeze()
    try:
        assert await layer.get(key) is None
        await layer.set(key, entry(b"w"))
        assert await layer.purge(None, None) == 0
        assert layer.errors >= 1
        assert layer.stats("b").misses >= 1
        # A layer first used while Redis is frozen: it connects, never gets an answer, and
        # still closes.
        other = make_layer(redis_server.url, reactor)
        assert await other.get(key) is None
        await other.close()
    finally:
        redis_server.thaw()

    async def hits_again() -> bool:
        return await layer.get(key) is not None

    await eventually(reactor, hits_again, timeout=45)


@pytest_twisted.ensureDeferred
async def test_unreachable_redis_is_a_fast_miss(reactor: Any) -> None:
    layer = make_layer(f"redis://127.0.0.1:{free_port()}/0", reactor, timeout_ms=200)
    try:
        assert await layer.get(CacheKey("b", "k")) is None
        await layer.set(CacheKey("b", "k"), entry())
        assert layer.errors >= 1
        assert layer.stats(None).misses == 1
        assert layer.stats(None).current_item_count == 0
    finally:
        await layer.close()


@pytest_twisted.ensureDeferred
async def test_purges_reach_other_instances(redis_server: RedisServer, reactor: Any) -> None:
    a = make_layer(redis_server.url, reactor)
    b = make_layer(redis_server.url, reactor)
    received: list[tuple[str | None, str | None, str | None]] = []
    service = b.subscribe_purges(lambda bucket, prefix, key: received.append((bucket, prefix, key)))
    service.startService()
    try:
        # B's subscription becomes active shortly after start: repeat A's purge until it lands.
        async def delivered(event: tuple[str | None, str | None, str | None]) -> bool:
            if event in received:
                return True
            await a.publish_purge(*event)
            await sleep(reactor, 0.1)
            return event in received

        await eventually(reactor, lambda: delivered(("img", "thumbs/", None)))
        await b.set(CacheKey("img", "k"), entry())
        assert b.stats("img").current_item_count == 1
        received.clear()
        await a.delete(CacheKey("img", "k"))
        await eventually(reactor, lambda: ("img", None, "k") in received, timeout=5)
        # A remote purge also drops what B counted as stored.
        assert b.stats("img").current_item_count == 0
        await a.purge(None, None)
        await eventually(reactor, lambda: (None, None, None) in received, timeout=5)
        # B's own purges are not delivered back to B.
        received.clear()
        await b.purge("img", None)
        await a.purge("img", "x")
        await eventually(reactor, lambda: ("img", "x", None) in received, timeout=5)
        assert received == [("img", "x", None)]
        # The subscriber survives a Redis restart.
        redis_server.restart()
        await eventually(reactor, lambda: delivered(("doc", None, None)), timeout=30)
    finally:
        await service.stopService()
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_close_stops_a_running_subscriber(redis_server: RedisServer, reactor: Any) -> None:
    layer = make_layer(redis_server.url, reactor)
    service = layer.subscribe_purges(lambda *event: None)
    service.startService()
    await layer.get(CacheKey("b", "k"))
    await layer.close()
    assert not service.running
    # Closed: calls answer at once, as misses.
    assert await layer.get(CacheKey("b", "k")) is None


# -- TLS (rediss://) ------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking only TLS on 127.0.0.1 (self-signed ``localhost`` certificate)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH")
    cert, key = write_self_signed(tmp_path)
    port = free_port()
    argv = [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    argv += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 15
        while True:
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="localhost") as tls,
                ):
                    tls.sendall(b"PING\r\n")
                    if tls.recv(100).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server with TLS did not start (built without TLS?)")
            time.sleep(0.05)
        yield port, cert
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_tls_ca_file_is_validated(tmp_path: Path, reactor: Any) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for url, ca in [
        ("rediss://localhost:1", str(junk)),
        ("rediss://localhost:1", str(tmp_path / "missing.pem")),
        ("redis://localhost:1", str(junk)),
    ]:
        with pytest.raises(ConfigError) as caught:
            make_layer(url, reactor, tls_ca_file=ca)
        assert caught.value.path == "cache.redis.tls_ca_file"


@pytest_twisted.ensureDeferred
async def test_rediss_with_a_trusted_ca(tls_redis: tuple[int, Path], reactor: Any) -> None:
    port, cert = tls_redis
    layer = make_layer(f"rediss://localhost:{port}/0", reactor, tls_ca_file=str(cert))
    untrusted = make_layer(f"rediss://localhost:{port}/0", reactor, timeout_ms=300)
    try:
        key = CacheKey("b", "secure")
        await layer.set(key, entry(b"over tls"))
        found = await layer.get(key)
        assert found is not None and found.body == b"over tls"
        assert layer.errors == 0
        # The system's CAs do not vouch for this certificate: a counted miss, never a hit.
        assert await untrusted.get(key) is None
        assert untrusted.errors == 1
    finally:
        await layer.close()
        await untrusted.close()

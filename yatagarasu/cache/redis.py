"""
The ``redis`` cache layer: entries shared by every instance through Redis.

**Settings** (``cache.redis``, validated by :func:`redis_settings`): see
:class:`RedisSettings`.

**Key layout.** One entry is one Redis string::

    <key_prefix>obj:<bucket>:<variant>:<object key>

``bucket`` and ``variant`` have ``%`` and ``:`` percent-escaped (so the object key, which is
kept as is, starts after the third ``:``); the variant is empty today
(``yatagarasu:obj:products::img/1.jpg``). Purges ``SCAN`` with a ``MATCH`` pattern built from
glob-escaped parts (``* ? [ ] \\`` in names are matched literally), check every returned key
against the bucket and prefix once more, and ``DEL`` them in batches. Never ``KEYS``, never
``FLUSHDB``: other data in the same database is left alone.

**Values** are msgpack maps: ``{"v": 1, "h": [[name, value], ...], "b": body, "s":
stored_at, "e": expires_at, "r": retain_until, "n": revalidate}`` — header names/values and
the body are msgpack ``bin`` (bytes stay bytes). Written with ``SETEX`` and a TTL of
``min(ttl_seconds, ceil(retain_until - now))``; an entry with no time left is not written (and
the key's old value is deleted, as it has been replaced).

**Failures** (Redis down or frozen, timeouts, error replies, undecodable values) never reach
the caller: ``get`` answers ``None`` (a miss), the others answer "nothing happened" (``False``
/ ``0``); each is logged and counted in :attr:`RedisCacheLayer.errors`. Timeouts and backoff
are the adapter's (:mod:`yatagarasu.cache.redis_client`).

**Stats** are counters of this instance: hits/misses per bucket; items/bytes are what *this
instance* wrote (size of the encoded value) minus what it deleted or purged, what it found
missing, what Redis expired (by the TTL it set) and, with a purge subscriber running, what other
instances purged. Entries written by other instances are not counted. ``evictions`` and
``max_size_bytes`` are 0 (Redis evicts on its own terms).

**Purge broadcast.** :meth:`RedisCacheLayer.delete` and :meth:`RedisCacheLayer.purge` publish
``{"origin": <instance id>, "bucket": ..., "prefix": ..., "key": ...}`` (JSON, ``null`` for
"all") on ``<key_prefix>purge``; :meth:`RedisCacheLayer.subscribe_purges` returns a service
that delivers other instances' events to a callback (its own are ignored).
"""

from __future__ import annotations

import heapq
import json
import math
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import msgpack  # type: ignore[import-untyped,unused-ignore]
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from yatagarasu.cache.redis_client import (
    RedisClient,
    RedisError,
    RedisTarget,
    RedisUnavailable,
    check_ca_pem,
)
from yatagarasu.cache.redis_sentinel import SentinelTarget, parse_address
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import (
    ICacheLayer,
    ICacheLayerFactory,
    ICacheWriter,
    IErrorCountingCacheLayer,
    IPurgeBroadcaster,
)
from yatagarasu.values import MIB, CacheEntry, CacheKey, LayerStats

log = Logger(namespace="yatagarasu.cache.redis")

#: Keys asked for per ``SCAN`` step (and deleted per ``DEL``) in purges.
SCAN_COUNT = 500
#: Format version stored in every value.
VALUE_VERSION = 1
#: Distinct header sets whose encoded head lines a layer keeps (cleared when full).
HEADS_KEPT = 4096

PurgeCallback = Callable[[str | None, str | None, str | None], object]
"""``on_remote_purge(bucket, prefix, key)``: ``None`` bucket = everything; ``key`` set = one
object; else ``prefix`` (``None``: the whole bucket)."""


@dataclass(frozen=True)
class SentinelSettings:
    """
    ``cache.redis.sentinel``: find the master through Redis Sentinel.

    :ivar master_name: the name the sentinels monitor the master under.
    :ivar addresses: ``host:port`` of each sentinel (port default 26379), at least one.
    :ivar username: ACL user name of the sentinels themselves.
    :ivar password: password of the sentinels themselves (the data nodes' is
        ``redis_password``).
    """

    master_name: str
    addresses: tuple[str, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def check(self, path: str) -> None:
        """:raises ConfigError: an empty name, no address or one that does not parse."""
        self.target(path)

    def target(self, path: str) -> SentinelTarget:
        """
        :param path: dotted path of these settings, for errors.
        :returns: the sentinels to ask.
        :raises ConfigError: as :meth:`check`.
        """
        if not self.master_name:
            raise ConfigError(join(path, "master_name"), "must not be empty")
        if not self.addresses:
            raise ConfigError(join(path, "addresses"), "at least one sentinel host:port")
        addresses = []
        for i, text in enumerate(self.addresses):
            try:
                addresses.append(parse_address(text))
            except ValueError as exc:
                raise ConfigError(f"{join(path, 'addresses')}[{i}]", str(exc)) from None
        return SentinelTarget(
            self.master_name, tuple(addresses), self.username or None, self.password or None
        )


@dataclass(frozen=True)
class RedisSettings:
    """
    ``cache.redis``.

    :ivar enabled: must be true for the layer to be built (seed: ``redis_enabled``).
    :ivar redis_url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS
        (certificate checked against the host name), or
        ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master_name[/db]``
        (the sentinels; user and password are the data nodes'). Required when enabled,
        unless ``sentinel`` is given.
    :ivar sentinel: the sentinels, as a mapping (instead of ``redis_url``).
    :ivar redis_password: password (overrides none in the URL; both given must agree).
    :ivar redis_db: database number (default: the URL's, else 0; both given must agree).
    :ivar tls_ca_file: with ``rediss://``: PEM file of the CA certificates to trust instead
        of the system's (read once, when the layer is built).
    :ivar key_prefix: prefix of every key and of the purge channel.
    :ivar ttl_seconds: longest TTL given to an entry.
    :ivar max_item_size_mb: largest body stored, MiB.
    :ivar timeout_ms: bound of every Redis call (waiting for a connection included).
    :ivar pool_size: connections in the pool.
    """

    enabled: bool = field(default=False, metadata={"aliases": ("redis_enabled",)})
    redis_url: str = field(default="", repr=False)  # may hold a password
    redis_password: str | None = field(default=None, repr=False)
    redis_db: int | None = None
    key_prefix: str = field(default="yatagarasu:", metadata={"aliases": ("redis_key_prefix",)})
    ttl_seconds: int = field(default=3600, metadata={"aliases": ("redis_ttl_seconds",)})
    tls_ca_file: str | None = None
    max_item_size_mb: float = 10.0
    timeout_ms: int = 500
    pool_size: int = 4
    sentinel: SentinelSettings | None = None

    def check(self, path: str) -> None:
        """:raises ConfigError: for values out of range (the URL only when enabled)."""
        if self.ttl_seconds < 1:
            raise ConfigError(join(path, "ttl_seconds"), "must be at least 1")
        if not 0 < self.max_item_size_mb <= 512:
            raise ConfigError(join(path, "max_item_size_mb"), "must be > 0 and at most 512")
        if not 1 <= self.timeout_ms <= 600_000:
            raise ConfigError(join(path, "timeout_ms"), "must be between 1 and 600000")
        if not 1 <= self.pool_size <= 256:
            raise ConfigError(join(path, "pool_size"), "must be between 1 and 256")
        if self.redis_db is not None and not 0 <= self.redis_db <= 1_000_000:
            raise ConfigError(join(path, "redis_db"), "must be 0 or more")
        if self.enabled:
            self.target(path)

    def target(self, path: str) -> RedisTarget:
        """
        :param path: dotted path of these settings, for errors.
        :returns: where to connect, from ``redis_url``, ``redis_password`` and ``redis_db``.
        :raises ConfigError: at ``<path>.redis_url`` (or the field that disagrees with it).
        """
        url_path = join(path, "redis_url")
        if self.sentinel is not None and self.redis_url:
            raise ConfigError(join(path, "sentinel"), "give either redis_url or sentinel, not both")
        if self.sentinel is None and not self.redis_url:
            raise ConfigError(
                url_path,
                "is required (redis://host:port/db, rediss://... or redis+sentinel://...)"
                " unless cache.redis.sentinel is given",
            )
        expected = (
            "expected redis://[:password@]host[:port][/db], rediss://...,"
            " or redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]"
        )
        try:
            parts = urlsplit(self.redis_url or "redis+sentinel://")
        except ValueError as exc:
            raise ConfigError(url_path, f"{exc}; {expected}") from None
        if parts.scheme not in ("redis", "rediss", "redis+sentinel"):
            raise ConfigError(url_path, f"unsupported scheme {parts.scheme!r}; {expected}")
        if parts.query or parts.fragment:
            raise ConfigError(
                url_path, f"query strings and fragments are not supported; {expected}"
            )
        host, port = "", 0
        sentinel: SentinelTarget | None = None
        db_text = parts.path.lstrip("/")
        if self.sentinel is not None:
            sentinel = self.sentinel.target(join(path, "sentinel"))
        elif parts.scheme == "redis+sentinel":
            sentinel, db_text = _sentinel_from_url(parts.netloc, db_text, url_path, expected)
        else:
            try:
                host = parts.hostname or ""
                port = parts.port or 6379
            except ValueError as exc:
                raise ConfigError(url_path, f"{exc}; {expected}") from exc
            if not host:
                raise ConfigError(url_path, f"no host; {expected}")
        url_db: int | None = None
        if db_text:
            if not db_text.isdigit():
                raise ConfigError(url_path, f"the database must be a number, got {db_text!r}")
            url_db = int(db_text)
        url_password = unquote(parts.password) if parts.password is not None else None
        username = unquote(parts.username) if parts.username else None
        if url_db is not None and self.redis_db is not None and url_db != self.redis_db:
            raise ConfigError(
                join(path, "redis_db"), f"{self.redis_db} contradicts /{url_db} in redis_url"
            )
        password = self.redis_password or url_password or None
        if self.redis_password and url_password and self.redis_password != url_password:
            raise ConfigError(
                join(path, "redis_password"), "differs from the password in redis_url"
            )
        db = self.redis_db if self.redis_db is not None else (url_db or 0)
        ca_pem = None
        if self.tls_ca_file is not None:
            ca_path = join(path, "tls_ca_file")
            if parts.scheme != "rediss":
                raise ConfigError(ca_path, "only applies to rediss:// URLs")
            try:
                with open(self.tls_ca_file, "rb") as f:
                    ca_pem = f.read()
                check_ca_pem(ca_pem)
            except (OSError, ValueError) as exc:
                raise ConfigError(ca_path, f"cannot load CA certificates: {exc}") from None
        return RedisTarget(
            host=host,
            port=port,
            tls=parts.scheme == "rediss",
            db=db,
            username=username,
            password=password,
            ca_pem=ca_pem,
            sentinel=sentinel,
        )


def _sentinel_from_url(
    netloc: str, path: str, url_path: str, expected: str
) -> tuple[SentinelTarget, str]:
    """
    :param netloc: ``[[user]:password@]host:port[,host:port...]`` of a ``redis+sentinel://`` URL.
    :param path: the URL's path without its leading ``/``: ``master_name[/db]``.
    :returns: the sentinels (without credentials: those in the URL are the data nodes') and
        the database part (may be empty).
    :raises ConfigError: at ``url_path``.
    """
    hosts = netloc.rpartition("@")[2]
    addresses = []
    for text in hosts.split(","):
        try:
            addresses.append(parse_address(text))
        except ValueError as exc:
            raise ConfigError(url_path, f"{exc}; {expected}") from None
    master_name, _, db_text = path.partition("/")
    if not master_name:
        raise ConfigError(url_path, f"no master name; {expected}")
    return SentinelTarget(unquote(master_name), tuple(addresses)), db_text


def redis_settings(settings: Mapping[str, Any] | None, path: str) -> RedisSettings:
    """
    Validate ``cache.redis``.

    :param settings: the mapping (``None``: empty).
    :param path: its dotted key path.
    :returns: the settings.
    :raises ConfigError: naming the dotted path of a bad value.
    """
    return from_raw(RedisSettings, settings, path)


# -- keys ----------------------------------------------------------------------------------


def _escape_part(text: str) -> str:
    return text.replace("%", "%25").replace(":", "%3A")


def _unescape_part(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")


def glob_escape(text: str) -> str:
    """
    :param text: literal text.
    :returns: a Redis glob pattern matching exactly ``text``.
    """
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


def _encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class _Known:
    bucket: str
    size: int
    deadline: float


# -- values --------------------------------------------------------------------------------


def encode_entry(entry: CacheEntry) -> bytes:
    """
    :param entry: an entry whose body is ``bytes``.
    :returns: the msgpack value stored in Redis.
    """
    packed = msgpack.packb(
        {
            "v": VALUE_VERSION,
            "h": [[name, value] for name, value in entry.headers],
            "b": entry.body,
            "s": entry.stored_at,
            "e": entry.expires_at,
            "r": entry.retain_until,
            "n": entry.revalidate,
        },
        use_bin_type=True,
    )
    assert isinstance(packed, bytes)
    return packed


def decode_entry(raw: bytes | memoryview) -> CacheEntry:
    """
    :param raw: a value written by :func:`encode_entry`.
    :returns: the entry (every field's type checked: a hit's cost, so plain loops and exact
        type tests).
    :raises ValueError: when it is not one.
    """
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"not msgpack: {exc}") from exc
    if type(doc) is not dict or doc.get("v") != VALUE_VERSION:
        raise ValueError("not a cache entry of this version")
    headers = doc.get("h")
    body = doc.get("b")
    revalidate = doc.get("n")
    if type(headers) is not tuple:
        raise ValueError("bad headers")
    for pair in headers:
        if (
            type(pair) is not tuple
            or len(pair) != 2
            or type(pair[0]) is not bytes
            or type(pair[1]) is not bytes
        ):
            raise ValueError("bad headers")
    if type(body) is not bytes or type(revalidate) is not bool:
        raise ValueError("bad body or flags")
    return CacheEntry(
        headers, body, _time(doc.get("s")), _time(doc.get("e")), _time(doc.get("r")), revalidate
    )


def _time(value: Any) -> float:
    if type(value) is float or type(value) is int:  # not bool
        return float(value)
    raise ValueError("bad times")


# -- the layer -----------------------------------------------------------------------------


@implementer(ICacheLayer, IPurgeBroadcaster, IErrorCountingCacheLayer)
class RedisCacheLayer:
    """
    The Redis cache layer (see the module docstring).

    The connection pool is created lazily, by the first call that needs Redis; nothing
    connects in the constructor and nothing waits for Redis to be up.

    :param settings: validated settings (``enabled``).
    :param reactor: the reactor: clock for timeouts, TTLs and backoff; TCP.
    :param path: dotted path of the settings, for errors.
    :param client: an adapter to use instead of building one (tests).
    :ivar instance_id: this layer's identity in purge events.
    :ivar errors: failed calls so far (logged; each answered as a miss / no-op).
    """

    name = "redis"

    def __init__(
        self,
        settings: RedisSettings,
        reactor: Any,
        path: str = "cache.redis",
        *,
        client: RedisClient | None = None,
    ) -> None:
        self.settings = settings
        self._reactor = reactor
        self.max_item_size = int(settings.max_item_size_mb * MIB)
        self.instance_id = uuid.uuid4().hex
        self.errors = 0
        self.target = settings.target(path)
        self.client = client or RedisClient(
            self.target,
            reactor,
            timeout=settings.timeout_ms / 1000.0,
            pool_size=settings.pool_size,
        )
        prefix = settings.key_prefix
        self._obj_prefix = prefix + "obj:"
        self.channel = _encode_text(prefix + "purge")
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()
        self._items: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._known: dict[bytes, _Known] = {}
        self._deadlines: list[tuple[float, bytes]] = []
        self._heads: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}

    # -- keys ------------------------------------------------------------------------------

    def redis_key(self, key: CacheKey) -> bytes:
        """
        :param key: a cache key.
        :returns: the Redis key holding its entry.
        """
        return _encode_text(
            f"{self._obj_prefix}{_escape_part(key.bucket)}:{_escape_part(key.variant)}:{key.key}"
        )

    def _parse_key(self, raw: bytes) -> CacheKey | None:
        text = raw.decode("utf-8", "surrogateescape")
        if not text.startswith(self._obj_prefix):
            return None
        parts = text[len(self._obj_prefix) :].split(":", 2)
        if len(parts) != 3:
            return None
        bucket, variant, key = parts
        return CacheKey(_unescape_part(bucket), key, _unescape_part(variant))

    def _pattern(self, bucket: str | None, prefix: str | None) -> bytes:
        base = glob_escape(self._obj_prefix)
        if bucket is None:
            return _encode_text(base + "*")
        base += glob_escape(_escape_part(bucket)) + ":"
        if not prefix:
            return _encode_text(base + "*")
        return _encode_text(base + "*:" + glob_escape(prefix) + "*")

    # -- bookkeeping -----------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._reactor.seconds())

    def _remember(self, rkey: bytes, bucket: str, size: int, ttl: int) -> None:
        self._forget(rkey)
        deadline = self._now() + ttl
        self._known[rkey] = _Known(bucket, size, deadline)
        self._items[bucket] += 1
        self._bytes[bucket] += size
        heapq.heappush(self._deadlines, (deadline, rkey))
        if len(self._deadlines) > 2 * len(self._known) + 1024:
            self._deadlines = [(k.deadline, r) for r, k in self._known.items()]
            heapq.heapify(self._deadlines)

    def _forget(self, rkey: bytes) -> None:
        known = self._known.pop(rkey, None)
        if known is not None:
            self._items[known.bucket] -= 1
            self._bytes[known.bucket] -= known.size
            if not self._items[known.bucket]:
                del self._items[known.bucket]
                del self._bytes[known.bucket]

    def _forget_matching(self, bucket: str | None, prefix: str | None, key: str | None) -> None:
        if bucket is not None and key is not None:
            self._forget(self.redis_key(CacheKey(bucket, key)))
            return
        for rkey in list(self._known):
            parsed = self._parse_key(rkey)
            if parsed is not None and _matches(parsed, bucket, prefix, key):
                self._forget(rkey)

    def _expire(self) -> None:
        now = self._now()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, rkey = heapq.heappop(self._deadlines)
            known = self._known.get(rkey)
            if known is not None and known.deadline == deadline:
                self._forget(rkey)

    def _failure(self, operation: str, exc: BaseException, **fields: Any) -> None:
        self.errors += 1
        fast = isinstance(exc, RedisUnavailable) and exc.fast
        (log.debug if fast else log.warn)(
            "redis cache {operation} failed: {error}",
            operation=operation,
            error=str(exc) or type(exc).__name__,
            **fields,
        )

    # -- ICacheLayer -----------------------------------------------------------------------

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        """See :meth:`ICacheLayer.get`; a failure is a miss (one ``GET``, plain callbacks)."""
        rkey = self.redis_key(key)
        return self.client.get(rkey).addCallbacks(
            self._got, self._get_failed, callbackArgs=(key, rkey), errbackArgs=(key,)
        )

    def _got(
        self, raw: bytes | memoryview | None, key: CacheKey, rkey: bytes
    ) -> CacheEntry | Deferred[CacheEntry | None] | None:
        if raw is None:
            self._forget(rkey)
            return self._counted(key, None)
        try:
            entry = decode_entry(raw)
        except ValueError as exc:
            self._failure("get", exc, key=key.text)
            return Deferred.fromCoroutine(self._undecodable(key, rkey))
        # A hit on the same headers as before reuses their encoded head lines.
        heads = self._heads
        head = heads.get(entry.headers)
        if head is not None:
            entry.reuse_head_lines(head)
        else:
            if len(heads) >= HEADS_KEPT:
                heads.clear()
            heads[entry.headers] = entry.head_lines
        return self._counted(key, entry)

    async def _undecodable(self, key: CacheKey, rkey: bytes) -> CacheEntry | None:
        await self._delete_quietly(rkey)
        return self._counted(key, None)

    def _get_failed(self, failure: Failure, key: CacheKey) -> None:
        failure.trap(RedisError)  # anything else (the caller cancelled) goes on
        self._failure("get", cast(RedisError, failure.value), key=key.text)
        self._counted(key, None)

    def _counted(self, key: CacheKey, entry: CacheEntry | None) -> CacheEntry | None:
        if entry is not None and entry.retain_until <= self._now():
            entry = None
        if entry is None:
            self._misses[key.bucket] += 1
        else:
            self._hits[key.bucket] += 1
        return entry

    def set(self, key: CacheKey, entry: CacheEntry) -> Deferred[None]:
        """
        See :meth:`ICacheLayer.set`. Declined (and any old value deleted): a body that is not
        ``bytes``, larger than ``max_item_size``, or an entry past ``retain_until``.
        """
        return Deferred.fromCoroutine(self._set(key, entry))

    async def _set(self, key: CacheKey, entry: CacheEntry) -> None:
        rkey = self.redis_key(key)
        ttl = min(self.settings.ttl_seconds, math.ceil(entry.retain_until - self._now()))
        if not isinstance(entry.body, bytes) or entry.length > self.max_item_size or ttl <= 0:
            await self._delete_quietly(rkey)
            return
        value = encode_entry(entry)
        try:
            await self.client.setex(rkey, ttl, value)
        except RedisError as exc:
            self._failure("set", exc, key=key.text)
            return
        self._remember(rkey, key.bucket, len(value), ttl)

    async def _delete_quietly(self, rkey: bytes) -> None:
        try:
            await self.client.delete([rkey])
        except RedisError as exc:
            if not (isinstance(exc, RedisUnavailable) and exc.fast):
                self._failure("delete", exc, key=rkey.decode("utf-8", "replace"))
        self._forget(rkey)

    def open_writer(self, key: CacheKey) -> ICacheWriter | None:
        """Redis does not stream: always ``None``."""
        return None

    def delete(self, key: CacheKey) -> Deferred[bool]:
        """See :meth:`ICacheLayer.delete`; publishes a purge event. A failure is ``False``."""
        return Deferred.fromCoroutine(self._delete(key))

    async def _delete(self, key: CacheKey) -> bool:
        rkey = self.redis_key(key)
        try:
            deleted = await self.client.delete([rkey])
        except RedisError as exc:
            self._failure("delete", exc, key=key.text)
            return False
        self._forget(rkey)
        await self.publish_purge(key.bucket, None, key.key)
        return deleted > 0

    def purge(self, bucket: str | None, prefix: str | None) -> Deferred[int]:
        """
        See :meth:`ICacheLayer.purge` (``SCAN MATCH`` + ``DEL``); publishes a purge event.
        A failure part way is logged and the count so far returned.
        """
        return Deferred.fromCoroutine(self._purge(bucket, prefix))

    async def _purge(self, bucket: str | None, prefix: str | None) -> int:
        if bucket is None:
            prefix = None
        pattern = self._pattern(bucket, prefix)
        cursor = b"0"
        deleted = 0
        try:
            while True:
                cursor, found = await self.client.scan(cursor, pattern, SCAN_COUNT)
                batch = []
                for rkey in found:
                    parsed = self._parse_key(rkey)
                    if parsed is not None and _matches(parsed, bucket, prefix, None):
                        batch.append(rkey)
                if batch:
                    deleted += await self.client.delete(batch)
                    for rkey in batch:
                        self._forget(rkey)
                if cursor == b"0":
                    break
        except RedisError as exc:
            self._failure("purge", exc, bucket=bucket, prefix=prefix, deleted=deleted)
            return deleted
        await self.publish_purge(bucket, prefix, None)
        return deleted

    def stats(self, bucket: str | None) -> LayerStats:
        """See :meth:`ICacheLayer.stats` and the module docstring for what is counted."""
        self._expire()
        if bucket is None:
            return LayerStats(
                hits=sum(self._hits.values()),
                misses=sum(self._misses.values()),
                current_size_bytes=sum(self._bytes.values()),
                current_item_count=sum(self._items.values()),
            )
        return LayerStats(
            hits=self._hits[bucket],
            misses=self._misses[bucket],
            current_size_bytes=self._bytes[bucket],
            current_item_count=self._items[bucket],
        )

    def services(self) -> list[IService]:
        """
        :returns: with Sentinel, the watchers of ``+switch-master``; else ``[]``. The pool
            connects lazily; see :meth:`subscribe_purges`.
        """
        return self.client.master_watchers()

    def close(self) -> Deferred[None]:
        """Close the pool and any purge subscriber; later calls answer misses."""
        return self.client.close()

    # -- purge broadcast -------------------------------------------------------------------

    def publish_purge(
        self, bucket: str | None, prefix: str | None, key: str | None
    ) -> Deferred[None]:
        """
        Tell the other instances to drop entries (``delete`` and ``purge`` call this).

        :param bucket: a bucket, or ``None`` for everything.
        :param prefix: with a bucket and no key: keys starting with it (``None``: all).
        :param key: with a bucket: one object key.
        :returns: fires once published (a failure is logged and counted, never raised).
        """
        return Deferred.fromCoroutine(self._publish(bucket, prefix, key))

    async def _publish(self, bucket: str | None, prefix: str | None, key: str | None) -> None:
        message = json.dumps(
            {"origin": self.instance_id, "bucket": bucket, "prefix": prefix, "key": key}
        ).encode("utf-8")
        try:
            await self.client.publish(self.channel, message)
        except RedisError as exc:
            self._failure("publish", exc, bucket=bucket, prefix=prefix, key=key)

    def subscribe_purges(self, callback: PurgeCallback) -> IService:
        """
        A service delivering other instances' purge events while it runs (it reconnects and
        subscribes again after Redis restarts). Events of this layer itself are ignored.

        :param callback: ``on_remote_purge(bucket, prefix, key)``, called in the reactor
            thread; its exceptions are logged.
        :returns: the service, not started (``close`` stops it too).
        """

        def on_message(raw: bytes) -> None:
            try:
                event = json.loads(raw)
                origin = event["origin"]
                bucket, prefix, key = event["bucket"], event["prefix"], event["key"]
                if not all(v is None or isinstance(v, str) for v in (origin, bucket, prefix, key)):
                    raise ValueError("fields must be strings or null")
            except (ValueError, KeyError, TypeError) as exc:
                log.warn(
                    "ignoring a malformed purge event on {channel}: {error}",
                    channel=self.channel.decode("utf-8", "replace"),
                    error=str(exc),
                )
                return
            if origin == self.instance_id:
                return
            self._forget_matching(bucket, prefix, key)
            try:
                callback(bucket, prefix, key)
            except Exception:
                log.failure(
                    "purge callback failed for {bucket} {prefix} {key}",
                    bucket=bucket,
                    prefix=prefix,
                    key=key,
                )

        return self.client.subscriber(self.channel, on_message)


def _matches(found: CacheKey, bucket: str | None, prefix: str | None, key: str | None) -> bool:
    if bucket is None:
        return True
    if found.bucket != bucket:
        return False
    if key is not None:
        return found.key == key
    return not prefix or found.key.startswith(prefix)


@implementer(ICacheLayerFactory)
class RedisLayerFactory:
    """``ICacheLayerFactory`` for ``redis`` (plugin: :mod:`yatagarasu.plugins.cache_redis`)."""

    name = "redis"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> RedisCacheLayer:
        """
        Validate ``cache.redis`` and build the layer (nothing connects yet).

        :param settings: the mapping.
        :param path: its dotted key path.
        :param reactor: the reactor.
        :returns: the layer.
        :raises ConfigError: naming the dotted path of a bad value, or ``<path>.enabled`` when
            the layer is built (listed in ``cache.cache_layers``) but not enabled.
        """
        parsed = redis_settings(settings, path)
        if not parsed.enabled:
            raise ConfigError(
                join(path, "enabled"),
                "must be true for the redis layer listed in cache.cache_layers",
            )
        return RedisCacheLayer(parsed, reactor, path)

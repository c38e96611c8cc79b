"""
The Redis adapter: the only module that imports txredisapi.

It gives the Redis cache layer a small, typed, *bounded* client:

- a connection pool (``RedisFactory`` of txredisapi, ``charset=None`` so bytes stay bytes,
  numbers not converted) created lazily by the first command, connecting through an endpoint
  built on the injected reactor (TCP, or TLS verified against the host name for ``rediss://``).
  The pool reconnects by itself (one ``ClientService`` per slot inside txredisapi); nothing
  waits for it to connect at startup. Replies are parsed by ``hiredis`` (pool connections are
  :class:`_PoolProtocol`, a txredisapi ``HiredisProtocol``; ``hiredis`` is a dependency),
  except bulk replies of ``BIG_BULK`` (16 KiB) and more, which the connection cuts out of the
  received bytes itself (one copy instead of hiredis' two, none when one read holds the whole
  value: it is handed on as a ``memoryview`` of that read). A command goes straight to a ready
  pool connection (all of a reactor turn's commands to one, sent in one write at the turn's
  end, the next turn's to the next; txredisapi's handler picks at random), through the handler
  only when none is ready (it waits for one) or the command holds its connection; commands are sent
  with plain Deferred callbacks, no coroutine, and ``GET`` by the connection's ``lean_get``
  (command bytes built at once, no txredisapi command machinery). Pool connections over TCP
  read ``READ_SIZE`` (256 KiB) at a time instead of Twisted's 64 KiB;
- every command raced against ``timeout`` seconds on the injected clock
  (``Deferred.addTimeout``): while Redis is down txredisapi would otherwise wait forever for a
  connection. txredisapi's own ``replyTimeout`` (90 % of ``timeout``, once a command is sent)
  drops a connection that does not answer, so a frozen or vanished peer does not keep it. A
  ``lean_get`` has neither: its connection keeps one deadline timer (the oldest owed reply's)
  and, past ``timeout``, drops the connection and fails the call with the same timeout;
- a breaker: after a failure (timeout, lost connection) commands are refused at once with
  :class:`RedisUnavailable` — without touching the pool, where cancelled waiters would pile up
  — until the backoff (1 s, doubling up to 30 s) has passed *and* the pool holds a live
  connection; or at once when the pool has made a new connection since the failure (Redis came
  back: the backoff starts again from 1 s, and a probe failing on the fresh connection, e.g. a
  timeout on a loaded machine, does not double it). Then one command at a time probes Redis;
  its success closes the breaker;
- a pub/sub subscriber (txredisapi's ``SubscriberProtocol``, ``charset = None`` set on its
  factory after construction) run under ``ClientService`` so that it survives Redis restarts;
- with Sentinel (:attr:`RedisTarget.sentinel`), connections go to the master the sentinels name
  (:mod:`yatagarasu.cache.redis_sentinel`), resolved again before every (re)connection; a pool
  connection is kept only if ``ROLE`` says ``master``; all connections are dropped when the
  sentinels name another master, or a command answers ``READONLY`` (we reached a demoted
  master). The sentinels are asked through one small bounded client each (no ``SELECT``).
  txredisapi's own ``Sentinel`` is not used: it runs on the global reactor with fixed 10 s
  discovery timeouts, and its ``ROLE`` check expects ``str`` replies, where ours are bytes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure

from yatagarasu.cache.redis_sentinel import (
    Address,
    MasterEndpoint,
    SentinelResolver,
    SentinelTarget,
)
from yatagarasu.turn_writes import connecting_reactor, sending_at_turn_end

log = Logger(namespace="yatagarasu.cache.redis")

#: First breaker backoff after a failure, seconds.
BACKOFF_INITIAL = 1.0
#: Longest breaker backoff, seconds.
BACKOFF_MAX = 30.0
#: Bytes asked for per read on a pool connection.
READ_SIZE = 256 * 1024
#: Bulk replies at least this large are read by :class:`_PoolProtocol` itself, not hiredis.
BIG_BULK = 16 * 1024
#: Longest wait between the pool's (and the subscriber's) reconnection attempts, seconds.
RECONNECT_MAX_DELAY = 5.0


class RedisError(Exception):
    """Base class of what the adapter raises."""


class RedisUnavailable(RedisError):
    """
    Redis could not be asked: down, timed out, backing off after a failure, or closed.

    :ivar fast: ``True`` when refused without trying (breaker open, closed).
    """

    def __init__(self, message: str, *, fast: bool = False) -> None:
        super().__init__(message)
        self.fast = fast


class RedisCommandFailed(RedisError):
    """Redis answered with an error reply (``WRONGTYPE``, ``NOAUTH``...)."""


class RedisScriptMissing(RedisCommandFailed):
    """``EVALSHA`` answered ``NOSCRIPT``: the script is not loaded (any more) on that Redis."""


@dataclass(frozen=True)
class RedisTarget:
    """
    Where Redis is and how to log in.

    :ivar host: host name or IP address.
    :ivar port: TCP port.
    :ivar tls: ``rediss://``: TLS, the certificate verified against ``host``.
    :ivar db: database number (``SELECT``); ``None``: no ``SELECT`` (a sentinel).
    :ivar username: ACL user name, or ``None``.
    :ivar password: password, or ``None``.
    :ivar ca_pem: with TLS, PEM certificates of the CAs to trust instead of the system's.
    :ivar sentinel: ask these sentinels where the master is; ``host`` and ``port`` are then
        unused.
    """

    host: str
    port: int
    tls: bool = False
    db: int | None = 0
    username: str | None = None
    password: str | None = None
    ca_pem: bytes | None = None
    sentinel: SentinelTarget | None = None

    def __repr__(self) -> str:
        if self.sentinel is not None:
            return f"RedisTarget(redis+sentinel://{self.sentinel!r}/{self.db})"
        scheme = "rediss" if self.tls else "redis"
        db = "" if self.db is None else f"/{self.db}"
        return f"RedisTarget({scheme}://{self.host}:{self.port}{db})"


class _PoolFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    """txredisapi's pool factory, counting the connections it has made (for the breaker)."""

    connections_made = 0

    def addConnection(self, conn: Any) -> None:
        before = self.size
        # Read replies in larger pieces than Twisted's 64 KiB: fewer reads (and hiredis feeds)
        # for values of 100 KiB and more (a TCP transport's recv size; nothing produces into
        # these connections, so its other use, pausing a producer, does not apply; with TLS
        # the attribute lands on the TLS wrapper and changes nothing).
        conn.transport.bufferSize = READ_SIZE
        super().addConnection(conn)
        if self.size > before:
            self.connections_made += 1


class _PoolProtocol(txredisapi.HiredisProtocol):  # type: ignore[misc]
    """
    A pool connection that reads large bulk replies itself and sends ``GET`` leanly.

    *Bulk replies* (``$<n>\\r\\n<n bytes>\\r\\n``) of at least ``BIG_BULK`` bytes that start
    at a reply boundary (hiredis holds nothing) are cut out of the received chunks and joined
    once (one copy; none when one chunk holds the whole value: then it is a ``memoryview`` of
    that chunk) instead of going through hiredis, which copies them into its buffer
    (growing it chunk by chunk) and again into the reply. Everything else is fed to hiredis,
    in order: replies are delivered in the order they arrive either way.

    *GET* (:meth:`lean_get`): the command bytes are built at once and the reply taken from the
    reply queue by a small :class:`_OwedGet` in place of a Deferred, without txredisapi's
    generic command building, its reply timer and its three callbacks, and with one deadline
    timer per connection (armed for the oldest owed reply, moved on when it fires early)
    instead of two timers per command: past its deadline the connection is dropped and the
    call fails, as txredisapi's reply timer does.
    """

    _value_left = 0
    _crlf_left = 0
    _pieces: list[Any] | None = None
    #: each :meth:`lean_get` whose reply is owed, oldest first.
    _owed: deque[_OwedGet] | None = None
    _deadline_call: Any = None

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # Walk the chunk reply by reply while hiredis holds nothing: large bulk replies are
        # taken here, small ones and one-line replies handed to hiredis one by one (so that a
        # large bulk after them still starts at a boundary); anything else (arrays, a reply
        # cut by the chunk's end) goes to hiredis with the rest of the chunk.
        if type(data) is not bytes:
            data = bytes(data)
        pos, length = 0, len(data)
        while pos < length:
            if self._pieces is not None:
                pos = self._consume(data, pos)
                continue
            if self._reader.has_data():
                break
            first = data[pos]
            if first == 0x24:  # "$": a bulk reply
                end = data.find(b"\r\n", pos + 1, pos + 24)
                if end < 0:
                    break
                try:
                    size = int(data[pos + 1 : end])
                except ValueError:
                    break  # hiredis reports the protocol error
                if size >= BIG_BULK:
                    self._value_left, self._crlf_left, self._pieces = size, 2, []
                    pos = self._consume(data, end + 2)
                    continue
                stop = end + 2 + (size + 2 if size >= 0 else 0)
            elif first in (0x2B, 0x2D, 0x3A):  # "+", "-", ":": one line
                end = data.find(b"\r\n", pos + 1)
                if end < 0:
                    break
                stop = end + 2
            else:
                break
            if stop > length:
                break
            super().dataReceived(data[pos:stop])
            pos = stop
        else:
            return
        super().dataReceived(data[pos:] if pos else data)

    def _consume(self, data: bytes, pos: int) -> int:
        """Take the bulk reply's next bytes from ``data[pos:]``; deliver it when whole.

        :returns: where the rest of ``data`` starts.
        """
        pieces = self._pieces
        assert pieces is not None
        length = len(data)
        take = min(self._value_left, length - pos)
        if take:
            pieces.append(data if take == length else memoryview(data)[pos : pos + take])
            self._value_left -= take
            pos += take
        if self._value_left:
            return pos
        skip = min(self._crlf_left, length - pos)
        if skip:
            done = 2 - self._crlf_left
            if data[pos : pos + skip] != b"\r\n"[done : done + skip]:
                raise txredisapi.InvalidData("bulk reply not ended by CRLF")
            self._crlf_left -= skip
            pos += skip
        if self._crlf_left:
            return pos
        self._pieces = None
        # one piece (the whole value arrived in one read) is handed on as it is, usually a
        # memoryview of that read: no copy
        self.replyReceived(self.tryConvertData(pieces[0] if len(pieces) == 1 else b"".join(pieces)))
        return pos

    def lean_get(self, key: bytes, clock: Any, timeout: float) -> Deferred[Any]:
        """
        ``GET key`` (see the class docstring).

        :param clock: the clock of the deadline.
        :param timeout: seconds the reply may take; past that the connection is dropped and
            the call fails with ``TimeoutError``.
        :returns: fires with the reply (an error reply as a failure).
        """
        self.transport.write(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        result: Deferred[Any] = Deferred()
        owed = self._owed
        if owed is None:
            owed = self._owed = deque()
        get = _OwedGet(clock.seconds() + timeout, result, owed)
        owed.append(get)
        queue = self.replyQueue
        if queue.pending:  # a reply nobody asked for: it goes to this GET, as txredisapi's would
            queue.get().addCallback(get.callback)
        else:
            # txredisapi's reply queue hands each reply, in order, to ``waiting.pop(0)
            # .callback``: the owed GET waits there itself, with no Deferred of its own
            queue.waiting.append(get)
        if self._deadline_call is None:
            self._deadline_call = clock.callLater(timeout, self._check_deadline, clock)
        return result

    def connectionLost(self, why: Failure) -> None:
        # txredisapi fails every owed reply (ConnectionError); the deadline timer has no more use.
        call, self._deadline_call = self._deadline_call, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(why)

    def _check_deadline(self, clock: Any) -> None:
        """
        The deadline timer: one per connection, at the oldest owed reply's deadline. Past it,
        the connection is dropped (the pool makes a new one; later owed calls fail with it),
        as txredisapi's own reply timer does for the other commands.
        """
        self._deadline_call = None
        owed = self._owed
        if not owed:
            return
        get = owed[0]
        deadline, result = get.deadline, get.result
        now = clock.seconds()
        if deadline > now:
            self._deadline_call = clock.callLater(deadline - now, self._check_deadline, clock)
            return
        self.transport.abortConnection()
        if not result.called:
            result.errback(defer.TimeoutError(deadline, "Redis reply"))


class _OwedGet:
    """
    A :meth:`_PoolProtocol.lean_get` whose reply is owed: it waits in txredisapi's reply
    queue, in order with the connection's other commands, where a Deferred would.

    :ivar deadline: when the reply is due, on the connection's clock.
    :ivar result: fires with the reply (an error reply as a failure).
    """

    __slots__ = ("_owed", "deadline", "result")

    def __init__(self, deadline: float, result: Deferred[Any], owed: deque[_OwedGet]) -> None:
        self.deadline = deadline
        self.result = result
        self._owed = owed

    def callback(self, reply: Any) -> None:
        """Take the reply from the queue: hand it on, unless the call is over already."""
        self._owed.popleft()  # replies come in order: this is the oldest owed GET
        result = self.result
        if result.called:  # cancelled or timed out: the reply is dropped
            return
        if isinstance(reply, Exception):
            result.errback(reply)
        else:
            result.callback(reply)


class _MasterProtocol(_PoolProtocol):
    """A pool connection kept only when ``ROLE`` says the node is a master (with Sentinel)."""

    def connectionMade(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check_role())

    async def _check_role(self) -> None:
        role: Any = None
        try:
            if self.password is not None:
                await self.auth(self.password, self.username)
            role = await self.role()
        except Exception as exc:
            role = exc
        if not (isinstance(role, list) and role and role[0] == b"master"):
            peer = self.transport.getPeer()
            log.warn(
                "Redis at {host}:{port} is not a master (ROLE answered {role}); reconnecting",
                host=getattr(peer, "host", "?"),
                port=getattr(peer, "port", "?"),
                role=repr(role[0] if isinstance(role, list) and role else role),
            )
            self.transport.loseConnection()
            return
        await super().connectionMade()


class _PurgeSubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """Hands every message to the factory's ``on_message``."""

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        on_message: Callable[[bytes], None] = self.factory.on_message
        if isinstance(message, bytes):
            on_message(message)


class _SubscriberFactory(txredisapi.SubscriberFactory):  # type: ignore[misc]
    protocol = _PurgeSubscriberProtocol

    def __init__(self, on_message: Callable[[bytes], None]) -> None:
        super().__init__()
        self.on_message = on_message


def _retry_policy(attempt: int) -> float:
    """Reconnection delay for ``ClientService``: 0.5 s doubling, up to ``RECONNECT_MAX_DELAY``."""
    return float(min(RECONNECT_MAX_DELAY, 0.5 * 2 ** min(attempt - 1, 16)))


class RedisClient:
    """
    A bounded Redis client (see the module docstring).

    :param target: where Redis is.
    :param reactor: the reactor: its clock bounds every call, its TCP connects.
    :param timeout: seconds each command may take, waiting for a connection included.
    :param pool_size: connections in the pool.
    :param backoff_initial: first breaker backoff, seconds.
    :param backoff_max: longest breaker backoff, seconds.
    """

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        *,
        timeout: float,
        pool_size: int,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.target = target
        self._reactor = reactor
        self._timeout = timeout
        self._pool_size = pool_size
        #: commands handed to ready connections so far (which one takes the next)
        self._picks = 0
        #: the connection this turn's commands go to (see :meth:`_send`)
        self._turn_conn: Any = None
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._factory: _PoolFactory | None = None
        self._closed = False
        # breaker state
        self._failures = 0
        self._open_until = 0.0
        self._delay = backoff_initial
        self._probing = False
        self._probe_after_reconnect = False
        self._connections_at_failure = 0
        self._subscribers: list[ClientService] = []
        self._subscriber_protocols: set[Any] = set()
        # with Sentinel: the resolver and one client per sentinel (made with the first endpoint)
        self._resolver: SentinelResolver | None = None
        self._sentinel_clients: list[RedisClient] = []

    # -- state -----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """:returns: whether the last command reached Redis (no failure since)."""
        return self._failures == 0 and not self._closed

    @property
    def started(self) -> bool:
        """:returns: whether the pool has been created (by the first command)."""
        return self._factory is not None

    def _endpoint(self) -> IStreamClientEndpoint:
        if self.target.sentinel is not None:
            return MasterEndpoint(self._sentinel_resolver(self.target.sentinel), self._node)
        return self._node(self.target.host, self.target.port)

    def _sentinel_resolver(self, sentinel: SentinelTarget) -> SentinelResolver:
        if self._resolver is None:
            self._sentinel_clients = [
                RedisClient(
                    RedisTarget(
                        host,
                        port,
                        db=None,
                        username=sentinel.username,
                        password=sentinel.password,
                    ),
                    self._reactor,
                    timeout=self._timeout,
                    pool_size=1,
                    backoff_initial=self._backoff_initial,
                    backoff_max=self._backoff_max,
                )
                for host, port in sentinel.addresses
            ]
            clients = self._sentinel_clients
            self._resolver = SentinelResolver(
                sentinel.master_name,
                [(f"{c.target.host}:{c.target.port}", c.sentinel_master) for c in clients],
                on_change=self._master_changed,
            )
        return self._resolver

    def master_watchers(self) -> list[IService]:
        """
        With Sentinel: services (not started) subscribed to each sentinel's ``+switch-master``
        channel; an announced master other than the one connected to drops every connection,
        so that they reconnect to it at once (the old master may still be reachable, e.g.
        after ``SENTINEL FAILOVER``). ``close`` stops them.

        :returns: one per sentinel, or ``[]`` without Sentinel.
        """
        if self.target.sentinel is None:
            return []
        self._sentinel_resolver(self.target.sentinel)
        announced = self._switch_announced
        return [c.subscriber(b"+switch-master", announced) for c in self._sentinel_clients]

    def _switch_announced(self, message: bytes) -> None:
        """``+switch-master``: ``<name> <old host> <old port> <new host> <new port>``."""
        fields = message.decode("utf-8", "replace").split()
        resolver = self._resolver
        if resolver is None or len(fields) != 5 or fields[0] != resolver.master_name:
            return
        try:
            address = (fields[3], int(fields[4]))
        except ValueError:
            return
        if address == resolver.current:
            return
        log.info(
            "a sentinel announced {host}:{port} as master of {master_name}; reconnecting",
            host=address[0],
            port=address[1],
            master_name=resolver.master_name,
        )
        self._drop_connections()

    def _master_changed(self, address: Address) -> None:
        """The sentinels name another master: drop every connection (they reconnect there)."""
        self._drop_connections()

    def _drop_connections(self) -> None:
        if self._factory is not None:
            for conn in list(self._factory.pool):
                conn.transport.loseConnection()
        for protocol in list(self._subscriber_protocols):
            protocol.transport.loseConnection()

    def _node(self, host: str, port: int) -> IStreamClientEndpoint:
        connect_timeout = max(1, math.ceil(self._timeout * 4))
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            connecting_reactor(self._reactor), host, port, timeout=connect_timeout
        )  # commands sent at the end of the reactor's turn (yatagarasu.turn_writes)
        if self.target.tls:
            trust = (
                trustRootFromCertificates(_load_certificates(self.target.ca_pem))
                if self.target.ca_pem
                else None
            )
            options = optionsForClientTLS(host, trustRoot=trust)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def _pool(self) -> Any:
        if self._factory is None:
            factory = _PoolFactory(
                repr(self.target),
                self.target.db,
                self._pool_size,
                True,  # isLazy: the handler is ours at once, nobody waits for the pool
                txredisapi.ConnectionHandler,
                None,  # charset: bytes in, bytes out
                self.target.password,
                # replyTimeout, a little shorter than ours so that it fires first: a connection
                # that does not answer in time is dropped (and remade by the pool) rather than
                # kept with replies owed to cancelled calls, or kept forever when the peer
                # vanished without a reset.
                self._timeout * 0.9,
                False,  # convertNumbers
                self.target.username,
            )
            factory.maxDelay = RECONNECT_MAX_DELAY
            factory.initialDelay = 0.5
            factory.protocol = (
                _MasterProtocol if self.target.sentinel is not None else _PoolProtocol
            )
            # Fired (failed) by txredisapi when a connection cannot log in or select the db,
            # or with the handler once the pool is full: nobody else listens to it.
            factory.deferred.addErrback(self._pool_failed)
            factory.startConnecting(self._endpoint())
            self._factory = factory
        return self._factory.handler

    @property
    def waiting(self) -> int:
        """:returns: commands waiting inside the pool for a connection (cancelled ones too)."""
        if self._factory is None:
            return 0
        queue = self._factory.connectionQueue
        return len(queue.peekers) + len(queue.waiting)

    def _pool_failed(self, failure: Failure) -> None:
        log.error(
            "Redis at {target} refused the connection: {error}",
            target=repr(self.target),
            error=failure.getErrorMessage(),
        )

    def _admit(self) -> bool:
        """
        :returns: whether this call is the probe of a failing Redis.
        :raises RedisUnavailable: when the call must not reach the pool.
        """
        if self._closed:
            raise RedisUnavailable("the Redis client is closed", fast=True)
        if self._failures == 0:
            return False
        if self._probing:
            raise RedisUnavailable("Redis is failing; a probe is under way", fast=True)
        factory = self._factory
        reconnected = (
            factory is not None and factory.connections_made > self._connections_at_failure
        )
        live = factory is not None and factory.size > 0
        now = self._reactor.seconds()
        if not reconnected and (now < self._open_until or not live):
            raise RedisUnavailable("Redis is failing; backing off", fast=True)
        if reconnected:
            self._delay = self._backoff_initial  # Redis is back: its backoff starts again
        self._probing = True
        self._probe_after_reconnect = reconnected
        return True

    def _succeeded(self) -> None:
        if self._failures:
            log.info(
                "Redis at {target} answers again (after {failures} failure(s))",
                target=repr(self.target),
                failures=self._failures,
            )
        self._failures = 0
        self._delay = self._backoff_initial
        self._probing = False

    def _failed(self, why: BaseException, probe: bool) -> None:
        if probe:
            self._probing = False
        now = self._reactor.seconds()
        if not probe and self._failures and now < self._open_until:
            return  # one more call that was under way when Redis failed
        self._failures += 1
        self._open_until = now + self._delay
        self._connections_at_failure = (
            self._factory.connections_made if self._factory is not None else 0
        )
        log.warn(
            "Redis at {target} failed ({error}); not asking it for {delay:.1f}s",
            target=repr(self.target),
            error=_describe(why),
            delay=self._delay,
            failures=self._failures,
        )
        if not (probe and self._probe_after_reconnect):
            self._delay = min(self._delay * 2, self._backoff_max)

    def _call(self, command: str, *args: Any) -> Deferred[Any]:
        """
        Send one command, bounded by the timeout (with plain callbacks, no coroutine: a cache
        hit's GET comes this way).

        :returns: fires with the reply; fails with :class:`RedisError`, or ``CancelledError``
            when the caller cancelled it.
        """
        try:
            probe = self._admit()
        except RedisUnavailable:
            return fail()
        try:
            d, lean = self._send(command, args)
        except Exception:
            d, lean = fail(), False
        if not lean:  # lean_get bounds its call itself
            d.addTimeout(self._timeout, self._reactor)
        return d.addCallbacks(
            self._replied,
            self._call_failed,
            callbackArgs=(command, probe),
            errbackArgs=(command, probe),
        )

    def _send(self, command: str, args: tuple[Any, ...]) -> tuple[Deferred[Any], bool]:
        """
        Hand a command to a ready pool connection directly -- the one this reactor turn's
        commands went to, or else the next one in turn, where txredisapi's handler picks one
        at random for a command that does not hold the connection -- or, when none is ready
        (or the command holds its connection), to the handler, which waits for one. A turn's
        commands on one connection leave in one write at the turn's end, and Redis answers
        them in one: under load, one send and one read per turn instead of one per
        connection.
        A ``GET`` of a bytes key on a :class:`_PoolProtocol` goes by its ``lean_get``.

        :returns: the reply's Deferred, and whether ``lean_get`` sent it (then it is bounded
            by the timeout already).
        """
        factory = self._factory
        ready = factory.connectionQueue.pending if factory is not None else ()
        if ready:
            # load spreading: each reactor turn's commands to one ready connection, the next
            # turn's to the next one; one write and one reply read per turn, not one per
            # connection
            conn = self._turn_conn
            if conn is None or not sending_at_turn_end(conn.transport) or conn not in ready:
                self._picks += 1
                conn = self._turn_conn = ready[self._picks % len(ready)]
            if (
                command == "get"
                and conn.connected
                and isinstance(conn, _PoolProtocol)
                and not conn.inTransaction
                and not conn.pipelining
                and type(args[0]) is bytes
            ):
                return conn.lean_get(args[0], self._reactor, self._timeout), True
            method = getattr(conn, command)
            if conn.connected and not getattr(method, "_blocking", False):
                result: Deferred[Any] = method(*args)
                return result, False
        pooled: Deferred[Any] = getattr(self._pool(), command)(*args)
        return pooled, False

    def _replied(self, result: Any, command: str, probe: bool) -> Any:
        if isinstance(result, Exception):  # txredisapi hands some errors back as values
            self._answered_error(result, probe)
            raise RedisCommandFailed(f"{command}: {result}")
        self._succeeded()
        return result

    def _call_failed(self, failure: Failure, command: str, probe: bool) -> Failure:
        exc = failure.value
        if isinstance(exc, txredisapi.ScriptDoesNotExist):
            self._answered_error(exc, probe)
            raise RedisScriptMissing(f"{command}: {exc}") from exc
        if isinstance(exc, txredisapi.ResponseError):
            self._answered_error(exc, probe)
            raise RedisCommandFailed(f"{command}: {exc}") from exc
        if isinstance(exc, defer.CancelledError) or not isinstance(exc, Exception):
            # The caller gave up (its client went away): not a Redis failure, no backoff.
            if probe:
                self._probing = False
            return failure
        self._failed(exc, probe)
        raise RedisUnavailable(f"{command}: {_describe(exc)}") from exc

    def _answered_error(self, error: Exception, probe: bool) -> None:
        """
        Redis answered with an error: it is up, unless the error is ``READONLY`` (a replica,
        e.g. a demoted master): then the connections are dropped to find the master again.

        :raises RedisUnavailable: for ``READONLY``.
        """
        if not str(error).startswith("READONLY"):
            self._succeeded()
            return
        self._drop_connections()
        self._failed(error, probe)
        raise RedisUnavailable(f"reached a replica: {error}")

    # -- commands --------------------------------------------------------------------------

    def get(self, key: bytes) -> Deferred[bytes | memoryview | None]:
        """
        :param key: the key.
        :returns: fires with its value (a large one read in one piece as a ``memoryview`` of
            the bytes received: no copy), or ``None`` when there is none; fails with
            :class:`RedisError` on any failure.
        """
        return self._call("get", key).addCallback(_bytes_or_none)

    async def setex(self, key: bytes, ttl: int, value: bytes) -> None:
        """
        :param key: the key.
        :param ttl: seconds to live, ≥ 1.
        :param value: the value.
        :raises RedisError: on any failure.
        """
        await self._call("setex", key, ttl, value)

    async def delete(self, keys: Sequence[bytes]) -> int:
        """
        :param keys: the keys (none: nothing is sent).
        :returns: how many existed.
        :raises RedisError: on any failure.
        """
        if not keys:
            return 0
        return int(await self._call("delete", list(keys)))

    async def scan(self, cursor: bytes, match: bytes, count: int) -> tuple[bytes, list[bytes]]:
        """
        One ``SCAN`` step.

        :param cursor: ``b"0"`` to start, then the cursor returned.
        :param match: a glob pattern (``MATCH``).
        :param count: the ``COUNT`` hint.
        :returns: the next cursor (``b"0"`` at the end) and this step's keys.
        :raises RedisError: on any failure.
        """
        reply = await self._call("scan", cursor, match, count)
        try:
            next_cursor, keys = reply
            next_cursor = next_cursor if isinstance(next_cursor, bytes) else str(next_cursor)
            return (
                next_cursor.encode() if isinstance(next_cursor, str) else next_cursor,
                [k for k in keys if isinstance(k, bytes)],
            )
        except (TypeError, ValueError) as exc:
            raise RedisCommandFailed(f"SCAN answered {reply!r}") from exc

    async def ttl(self, key: bytes) -> int:
        """
        :param key: the key.
        :returns: its TTL in seconds (-1: none, -2: no such key).
        :raises RedisError: on any failure.
        """
        return int(await self._call("ttl", key))

    async def sentinel_master(self, master_name: str) -> Address | None:
        """
        Ask a sentinel (this client's target) where a master is.

        :param master_name: the monitored master's name.
        :returns: its host and port, or ``None`` when the sentinel knows no such master.
        :raises RedisError: on any failure.
        """
        reply = await self._call("sentinel_get_master_addr_by_name", master_name.encode())
        if reply is None:
            return None
        try:
            host, port = reply
            return (host.decode("ascii") if isinstance(host, bytes) else str(host)), int(port)
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise RedisCommandFailed(f"SENTINEL answered {reply!r}") from exc

    async def script_load(self, script: bytes) -> bytes:
        """
        ``SCRIPT LOAD``.

        :param script: a Lua script.
        :returns: its SHA1 (hex, as bytes), for :meth:`evalsha`.
        :raises RedisError: on any failure.
        """
        reply = await self._call("script_load", script)
        if isinstance(reply, str):
            reply = reply.encode("ascii")
        if not isinstance(reply, bytes):
            raise RedisCommandFailed(f"SCRIPT LOAD answered {type(reply).__name__}")
        return reply

    async def evalsha(self, sha: bytes, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        """
        ``EVALSHA``: run a script loaded with :meth:`script_load`.

        :param sha: the script's SHA1.
        :param keys: its ``KEYS``.
        :param args: its ``ARGV``.
        :returns: the script's reply (bytes, ints and lists of them).
        :raises RedisScriptMissing: when Redis does not know the script (``NOSCRIPT``).
        :raises RedisError: on any other failure.
        """
        return await self._call("evalsha", sha.decode("ascii"), list(keys), list(args))

    async def publish(self, channel: bytes, message: bytes) -> int:
        """
        :param channel: the channel.
        :param message: the message.
        :returns: how many subscribers received it.
        :raises RedisError: on any failure.
        """
        return int(await self._call("publish", channel, message))

    # -- pub/sub ---------------------------------------------------------------------------

    def subscriber(self, channel: bytes, on_message: Callable[[bytes], None]) -> IService:
        """
        A service that, while running, stays subscribed to ``channel`` (reconnecting and
        subscribing again after Redis restarts) and calls ``on_message`` with each message.

        :param channel: the channel.
        :param on_message: called with each message's bytes, in the reactor thread.
        :returns: the service (not started).
        """
        factory = _SubscriberFactory(on_message)
        factory.deferred.addErrback(self._pool_failed)
        # SubscriberFactory's constructor takes none of these: set them afterwards.
        factory.charset = None
        factory.convertNumbers = False
        factory.password = self.target.password
        factory.username = self.target.username
        timeout = self._timeout
        reactor = self._reactor
        target = self.target
        subscribed = self._subscriber_protocols

        async def subscribe(protocol: Any) -> None:
            try:
                ready: Deferred[Any] = protocol.whenConnected()
                await ready.addTimeout(max(timeout, 1.0) * 4, reactor)
                reply: Deferred[Any] = protocol.subscribe([channel])
                await reply.addTimeout(max(timeout, 1.0) * 4, reactor)
            except Exception as exc:
                log.warn(
                    "could not subscribe to {channel} on Redis at {target}: {error}",
                    channel=channel.decode("utf-8", "replace"),
                    target=repr(target),
                    error=_describe(exc),
                )
                protocol.transport.abortConnection()
                raise
            subscribed.add(protocol)
            protocol.whenDisconnected().addCallback(subscribed.discard)
            log.info(
                "subscribed to {channel} on Redis at {target}",
                channel=channel.decode("utf-8", "replace"),
                target=repr(target),
            )

        def prepare(protocol: Any) -> Deferred[None]:
            return Deferred.fromCoroutine(subscribe(protocol))

        service = ClientService(
            self._endpoint(),
            factory,
            retryPolicy=_retry_policy,
            clock=self._reactor,
            prepareConnection=prepare,
        )
        self._subscribers.append(service)
        return service

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        Refuse further commands, stop the pool and any running subscriber, close connections.

        :returns: fires when the connections are closed (or after a few seconds regardless).
        """
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        self._closed = True
        self._turn_conn = None
        waits: list[Deferred[Any]] = []
        if self._factory is not None:
            waits.append(self._factory.disconnect())
        for service in self._subscribers:
            if service.running:
                waits.append(defer.maybeDeferred(service.stopService))
        self._subscribers.clear()
        waits.extend(client.close() for client in self._sentinel_clients)
        if waits:
            done: Deferred[Any] = defer.DeferredList(waits, consumeErrors=True)
            done.addTimeout(max(self._timeout * 4, 2.0), self._reactor)
            try:
                await done
            except defer.TimeoutError:
                log.warn("Redis connections did not close in time", target=repr(self.target))


def _bytes_or_none(value: Any) -> bytes | memoryview | None:
    if value is not None and not isinstance(value, bytes | memoryview):
        raise RedisCommandFailed(f"GET answered {type(value).__name__}, not bytes")
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, defer.TimeoutError | defer.CancelledError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_certificates(pem: bytes) -> list[Certificate]:
    """
    :param pem: one or more PEM certificates.
    :returns: them, for ``trustRootFromCertificates``.
    :raises ValueError: when there is none, or one does not parse.
    """
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in pem.split(marker)[1:]]
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [Certificate.loadPEM(block) for block in blocks]


def check_ca_pem(pem: bytes) -> None:
    """
    :param pem: PEM certificates (``tls_ca_file``).
    :raises ValueError: when they cannot be used as a trust root.
    """
    try:
        trustRootFromCertificates(_load_certificates(pem))
    except ValueError:
        raise
    except Exception as exc:  # pyOpenSSL errors
        raise ValueError(str(exc) or type(exc).__name__) from exc

"""
Finding the Redis master through Sentinel, for the Redis adapter's connections.

:class:`SentinelResolver` asks the sentinels in turn (``SENTINEL get-master-addr-by-name``),
starting with the one that answered last, and returns the first address named; a sentinel that
fails or does not know the master is skipped. :class:`MasterEndpoint` is an
``IStreamClientEndpoint`` that resolves before **every** connection attempt, so a pool slot or
subscriber that lost its connection (the master died) reconnects to whichever node Sentinel
names now. Nothing here speaks Redis: the question to each sentinel is a callable, and the
adapter (:mod:`yatagarasu.cache.redis_client`) checks with ``ROLE`` that the node it reached
is a master.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="yatagarasu.cache.redis")

#: Port of a sentinel when an address gives none.
SENTINEL_PORT = 26379

Address = tuple[str, int]
AskMaster = Callable[[str], Awaitable[Address | None]]
"""``ask(master_name)``: the address one sentinel names for the master, ``None`` when it
knows no such master; raises on failure (bounded in time by whoever implements it)."""


@dataclass(frozen=True)
class SentinelTarget:
    """
    Where the sentinels are and which master to ask them for.

    :ivar master_name: the name the sentinels monitor the master under.
    :ivar addresses: ``(host, port)`` of each sentinel.
    :ivar username: ACL user name for the sentinels, or ``None``.
    :ivar password: password of the sentinels themselves (not of the data nodes), or ``None``.
    """

    master_name: str
    addresses: tuple[Address, ...]
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.addresses)
        return f"{hosts}/{self.master_name}"


def parse_address(text: str) -> Address:
    """
    :param text: ``host[:port]`` or ``[ipv6][:port]``.
    :returns: host and port (:data:`SENTINEL_PORT` when none is given).
    :raises ValueError: when it is not an address.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not host:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


class MasterNotFound(ConnectError):
    """No sentinel named a master (all failed, or none knows the name)."""


class SentinelResolver:
    """
    Asks the sentinels, in turn, where the master is (see the module docstring).

    :param master_name: the monitored master's name.
    :param sentinels: ``(label, ask)`` per sentinel, in the configured order.
    :param on_change: called with the new address when it differs from the last one resolved
        (not for the first): the adapter drops connections to the old master.
    """

    def __init__(
        self,
        master_name: str,
        sentinels: Sequence[tuple[str, AskMaster]],
        on_change: Callable[[Address], object] = lambda address: None,
    ) -> None:
        if not sentinels:
            raise ValueError("at least one sentinel")
        self.master_name = master_name
        self._sentinels = list(sentinels)
        self._on_change = on_change
        self._first = 0
        #: The address resolved last, or ``None``.
        self.current: Address | None = None

    async def master(self) -> Address:
        """
        :returns: the master's address, from the first sentinel that names one.
        :raises MasterNotFound: when none does.
        """
        problems: list[str] = []
        count = len(self._sentinels)
        for step in range(count):
            index = (self._first + step) % count
            label, ask = self._sentinels[index]
            try:
                address = await ask(self.master_name)
            except Exception as exc:
                problems.append(f"{label}: {exc or type(exc).__name__}")
                continue
            if address is None:
                problems.append(f"{label}: does not know {self.master_name!r}")
                continue
            self._first = index
            self._found(label, address)
            return address
        raise MasterNotFound(
            string=f"no sentinel named a master for {self.master_name!r} ({'; '.join(problems)})"
        )

    def _found(self, label: str, address: Address) -> None:
        previous, self.current = self.current, address
        if previous == address:
            return
        log.info(
            "sentinel {sentinel} names {host}:{port} as master of {master_name}",
            sentinel=label,
            host=address[0],
            port=address[1],
            master_name=self.master_name,
            previous=f"{previous[0]}:{previous[1]}" if previous else None,
        )
        if previous is not None:
            self._on_change(address)


@implementer(IStreamClientEndpoint)
class MasterEndpoint:
    """
    Connects to the master the resolver names, resolving before every attempt.

    :param resolver: the resolver.
    :param endpoint_for: the endpoint of one node, from its host and port.
    """

    def __init__(
        self, resolver: SentinelResolver, endpoint_for: Callable[[str, int], IStreamClientEndpoint]
    ) -> None:
        self.resolver = resolver
        self._endpoint_for = endpoint_for

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """See ``IStreamClientEndpoint.connect``; fails with :class:`MasterNotFound` too."""
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> Any:
        host, port = await self.resolver.master()
        return await self._endpoint_for(host, port).connect(factory)

"""Client addresses behind trusted proxies, and per-bucket IP allow/block lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from yatagarasu.config.networks import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(value: str) -> Address | None:
    """
    :param value: an address as text (IPv4-mapped IPv6 addresses are unmapped).
    :returns: the address, or ``None`` when it is not one.
    """
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


class ClientAddressResolver:
    """
    Find the client's address: the socket peer, or — only when the peer is a trusted proxy —
    the rightmost ``X-Forwarded-For`` entry that is not itself a trusted proxy.

    :param trusted: ``server.trusted_proxies``.
    """

    def __init__(self, trusted: Sequence[Network]) -> None:
        self._trusted = tuple(trusted)

    def client_ip(self, peer: str, forwarded_for: Callable[[], Sequence[bytes] | None]) -> str:
        """
        :param peer: the socket peer's address.
        :param forwarded_for: returns every ``X-Forwarded-For`` header value, in order (only
            called when the peer is a trusted proxy).
        :returns: the client address as text.
        """
        if not self._trusted:  # the common case, kept cheap: no parsing
            return peer[7:] if peer.startswith("::ffff:") and "." in peer else peer
        peer_address = parse_address(peer)
        if peer_address is None or not _within(peer_address, self._trusted):
            return str(peer_address) if peer_address is not None else peer
        hops = [
            hop.strip()
            for value in forwarded_for() or ()
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        client = peer_address
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                break
            client = address
            if not _within(address, self._trusted):
                break
        return str(client)


class IpFilter:
    """
    A bucket's ``ip_filter``: with an allowlist, only matching clients get in (an allowlist
    match wins over the blocklist); otherwise blocklisted clients are refused.

    :param allow: allowed networks (empty: everyone not blocked).
    :param block: blocked networks.
    """

    def __init__(self, allow: Sequence[Network], block: Sequence[Network]) -> None:
        self._allow = tuple(allow)
        self._block = tuple(block)

    def allows(self, client_ip: str) -> bool:
        """
        :param client_ip: the client address as text.
        :returns: whether the client may use the bucket.
        """
        address = parse_address(client_ip)
        if address is None:
            return not self._allow
        if self._allow:
            return _within(address, self._allow)
        return not _within(address, self._block)

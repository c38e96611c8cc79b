"""IP addresses and networks in the configuration (trusted proxies, allow/block lists)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from yatagarasu.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str], path: str) -> tuple[Network, ...]:
    """
    :param values: CIDRs or single addresses (IPv4 or IPv6).
    :param path: dotted key path of the list, for errors.
    :returns: the networks.
    :raises ConfigError: naming the entry that is not an address or network.
    """
    networks = []
    for i, value in enumerate(values):
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{path}[{i}]", f"not an IP address or CIDR: {value!r}") from None
    return tuple(networks)

"""
Client addresses and IP filters (yatagarasu.auth.network): trusted proxies, allow and block lists.
"""

from __future__ import annotations

from typing import Any

import pytest

from yatagarasu.auth.network import ClientAddressResolver, IpFilter
from yatagarasu.config import ConfigError
from yatagarasu.config.networks import parse_networks


def test_forwarded_for_only_from_trusted_proxies() -> None:
    resolver = ClientAddressResolver(parse_networks(["10.0.0.0/8", "::1"], "t"))

    def xff(*values: bytes) -> Any:
        return lambda: list(values) or None

    chain = xff(b"203.0.113.9, 198.51.100.7", b"10.1.1.1")
    assert resolver.client_ip("10.0.0.2", chain) == "198.51.100.7"
    assert resolver.client_ip("192.0.2.1", chain) == "192.0.2.1"
    assert resolver.client_ip("::1", xff(b"2001:db8::5")) == "2001:db8::5"
    assert resolver.client_ip("10.0.0.2", xff()) == "10.0.0.2"
    assert resolver.client_ip("10.0.0.2", xff(b"garbage, 10.2.2.2")) == "10.2.2.2"
    assert ClientAddressResolver(()).client_ip("::ffff:192.0.2.1", chain) == "192.0.2.1"


def test_ip_filter_allow_wins_and_block() -> None:
    both = IpFilter(parse_networks(["192.0.2.0/24"], "a"), parse_networks(["192.0.2.7"], "b"))
    assert both.allows("192.0.2.7")
    assert not both.allows("198.51.100.1")
    block_only = IpFilter((), parse_networks(["2001:db8::/32", "198.51.100.1"], "b"))
    assert not block_only.allows("2001:db8::1")
    assert not block_only.allows("198.51.100.1")
    assert block_only.allows("198.51.100.2")
    with pytest.raises(ConfigError) as info:
        parse_networks(["10.0.0.0/8", "nope"], "buckets[0].ip_filter.allowlist")
    assert info.value.path == "buckets[0].ip_filter.allowlist[1]"

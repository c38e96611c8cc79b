"""Requests for unit tests, built without a server (what an auth scheme reads from one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest


def fake_request(
    path: str = "/bucket/key",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    args: Mapping[str, list[str]] | None = None,
    client_ip: str = "127.0.0.1",
) -> IRequest:
    """
    A request object with headers, query arguments and a client address, for unit tests.

    :param path: the request path.
    :param method: the method.
    :param headers: request headers.
    :param args: query arguments (``{"token": ["abc"]}``).
    :param client_ip: the peer address.
    :returns: an ``IRequest`` (twisted.web's ``DummyRequest``).
    """
    request: Any = DummyRequest([p.encode("utf-8") for p in path.strip("/").split("/")])
    request.method = method.encode("ascii")
    request.path = path.encode("utf-8")
    request.uri = request.path
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.args = {
        k.encode("utf-8"): [v.encode("utf-8") for v in vs] for k, vs in (args or {}).items()
    }
    request.client = IPv4Address("TCP", client_ip, 40000)
    return cast(IRequest, request)

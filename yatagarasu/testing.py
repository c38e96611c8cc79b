"""
Public test helpers for plugin authors: build requests without a server, and read the result
of an already-fired ``Deferred``.

    from yatagarasu.testing import fake_request, result_of

    identity = result_of(scheme.authenticate(fake_request(headers={"X-API-Key": "k1"})))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

T = TypeVar("T")


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


def result_of(deferred: Deferred[T]) -> T:
    """
    The result of a Deferred that has already fired.

    :param deferred: the Deferred.
    :returns: its result.
    :raises BaseException: the exception it failed with.
    :raises AssertionError: when it has not fired yet.
    """
    results: list[Any] = []
    deferred.addBoth(results.append)
    if not results:
        raise AssertionError(f"{deferred!r} has not fired")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]

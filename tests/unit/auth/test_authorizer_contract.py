"""
The authorizer contract (``yatagarasu.testing.AuthorizerContract``) run against the built-in
``opa`` and ``openfga`` (their HTTP side answered at once by an agent of the test's own) and
the third-party ``owner_prefix`` (tests/plugins/ownerprefix).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from tests.unit.fakes import FakeResponse
from yatagarasu import plugins
from yatagarasu.auth.opa import OpaAuthorizerFactory
from yatagarasu.auth.openfga import OpenFgaAuthorizerFactory
from yatagarasu.discovery import find
from yatagarasu.interfaces import IAuthorizerFactory
from yatagarasu.testing import AuthorizerContract
from yatagarasu.values import AuthorizationQuery, Identity

ALICE = Identity("alice", {"sub": "alice"}, "jwt")


def query(key: str) -> AuthorizationQuery:
    return AuthorizationQuery("b", key, "GET", "127.0.0.1", ALICE)


class _Collect:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


@implementer(IAgent)
class AnsweringAgent:
    """Answers every POST at once with ``answer(decoded body)`` as JSON."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        sink = _Collect()
        bodyProducer.startProducing(sink)
        body = json.dumps(self._answer(json.loads(sink.data))).encode()
        return succeed(FakeResponse(200, {"Content-Type": "application/json"}, body=body))


class TestOpaContract(AuthorizerContract):
    def setup_method(self) -> None:
        agent = AnsweringAgent(lambda doc: {"result": doc["input"]["key"] == "ok"})
        settings = {"opa_url": "http://opa", "opa_policy_path": "p"}
        self.authorizer = OpaAuthorizerFactory().build(settings, "a", Clock(), agent=agent)

    def allowed_query(self) -> AuthorizationQuery:
        return query("ok")

    def denied_query(self) -> AuthorizationQuery:
        return query("no")


class TestOpenFgaContract(AuthorizerContract):
    def setup_method(self) -> None:
        agent = AnsweringAgent(lambda doc: {"allowed": doc["tuple_key"]["object"] == "file:b/ok"})
        settings = {"openfga_endpoint": "http://fga", "openfga_store_id": "S"}
        self.authorizer = OpenFgaAuthorizerFactory().build(settings, "a", Clock(), agent=agent)

    def allowed_query(self) -> AuthorizationQuery:
        return query("ok")

    def denied_query(self) -> AuthorizationQuery:
        return query("no")


class TestOwnerPrefixContract(AuthorizerContract):
    def setup_method(self) -> None:
        factory = find(IAuthorizerFactory, "owner_prefix", "authorization.type", plugins)
        self.authorizer = factory.build({}, "buckets[0].authorization", Clock())

    def allowed_query(self) -> AuthorizationQuery:
        return query("alice/x")

    def denied_query(self) -> AuthorizationQuery:
        return query("bob/x")

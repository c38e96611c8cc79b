"""The auth scheme contract (``yatagarasu.testing.AuthSchemeContract``) run against ``jwt``."""

from __future__ import annotations

import jwt as pyjwt
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest

from yatagarasu import plugins
from yatagarasu.discovery import find
from yatagarasu.interfaces import IAuthSchemeFactory
from yatagarasu.testing import AuthSchemeContract, fake_request

SECRET = "s" * 64


class TestJwtSchemeContract(AuthSchemeContract):
    def setup_method(self) -> None:
        self.reactor = Clock()
        self.reactor.advance(1_700_000_000)
        factory = find(IAuthSchemeFactory, "jwt", "jwt", plugins)
        self.scheme = factory.build({"secret": SECRET}, "jwt", self.reactor)

    def _bearer(self, secret: str) -> IRequest:
        # Valid for an hour from the test's own clock (the reactor the scheme uses).
        claims = {"sub": "alice", "exp": int(self.reactor.seconds()) + 3600}
        token = pyjwt.encode(claims, secret, algorithm="HS256")
        return fake_request(headers={"Authorization": f"Bearer {token}"})

    def accepted_request(self) -> IRequest:
        return self._bearer(SECRET)

    def refused_request(self) -> IRequest:
        return self._bearer("x" * 64)

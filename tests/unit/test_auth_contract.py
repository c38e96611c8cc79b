"""The auth scheme contract (``yatagarasu.testing.AuthSchemeContract``) run against ``jwt``."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
import pytest
from twisted.web.iweb import IRequest

from yatagarasu import plugins
from yatagarasu.discovery import find
from yatagarasu.interfaces import IAuthSchemeFactory
from yatagarasu.testing import AuthSchemeContract, fake_request

SECRET = "s" * 64


class TestJwtSchemeContract(AuthSchemeContract):
    @pytest.fixture(autouse=True)
    def _scheme(self, reactor: Any) -> None:
        self.reactor = reactor
        factory = find(IAuthSchemeFactory, "jwt", "jwt", plugins)
        self.scheme = factory.build({"secret": SECRET}, "jwt", reactor)

    def _bearer(self, secret: str) -> IRequest:
        # Valid for an hour from the test's own clock (the reactor the scheme uses).
        claims = {"sub": "alice", "exp": int(self.reactor.seconds()) + 3600}
        token = pyjwt.encode(claims, secret, algorithm="HS256")
        return fake_request(headers={"Authorization": f"Bearer {token}"})

    def accepted_request(self) -> IRequest:
        return self._bearer(SECRET)

    def refused_request(self) -> IRequest:
        return self._bearer("x" * 64)

"""
The third-party apikey scheme (tests/plugins/apikey), tested the way docs/plugins.md says: the
public fakes and the auth scheme contract.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from zope.interface.verify import verifyObject

from yatagarasu import plugins
from yatagarasu.config import ConfigError
from yatagarasu.discovery import find
from yatagarasu.errors import AuthenticationRequired, InvalidCredentials
from yatagarasu.interfaces import IAuthScheme, IAuthSchemeFactory
from yatagarasu.testing import AuthSchemeContract, fake_request, result_of


def test_apikey_scheme_with_public_fakes() -> None:
    factory = find(IAuthSchemeFactory, "apikey", "auth.scheme", plugins)
    scheme = factory.build({"keys": {"k-1": "robot"}}, "buckets[0].auth.settings", Clock())
    assert verifyObject(IAuthScheme, scheme)
    identity = result_of(scheme.authenticate(fake_request(headers={"X-API-Key": "k-1"})))
    assert identity.subject == "robot"
    with pytest.raises(InvalidCredentials):
        result_of(scheme.authenticate(fake_request(headers={"X-API-Key": "k-2"})))
    with pytest.raises(AuthenticationRequired):
        result_of(scheme.authenticate(fake_request()))


def test_apikey_settings_are_validated_with_dotted_paths() -> None:
    factory = find(IAuthSchemeFactory, "apikey", "auth.scheme", plugins)
    with pytest.raises(ConfigError) as info:
        factory.build({"keys": {"a": "b"}, "hedaer": "X"}, "buckets[2].auth.settings", Clock())
    assert info.value.path == "buckets[2].auth.settings.hedaer"


class TestApiKeyContract(AuthSchemeContract):
    """The auth scheme contract on a ``Clock``: every Deferred it returns has already fired."""

    def setup_method(self) -> None:
        factory = find(IAuthSchemeFactory, "apikey", "auth.scheme", plugins)
        self.scheme = factory.build({"keys": {"k-1": "robot"}}, "auth.settings", Clock())

    def accepted_request(self) -> IRequest:
        return fake_request(headers={"X-API-Key": "k-1"})

    def refused_request(self) -> IRequest:
        return fake_request(headers={"X-API-Key": "k-2"})

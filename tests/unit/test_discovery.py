"""Plugin discovery, and the third-party ``apikey`` scheme tested the way docs/plugins.md says."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface.verify import verifyObject

from yatagarasu import plugins
from yatagarasu.config import ConfigError
from yatagarasu.discovery import available, find
from yatagarasu.errors import AuthenticationRequired, InvalidCredentials
from yatagarasu.interfaces import IAuthScheme, IAuthSchemeFactory
from yatagarasu.testing import AuthSchemeContract, fake_request, result_of


def test_builtin_and_third_party_schemes_are_discovered() -> None:
    schemes = available(IAuthSchemeFactory, plugins)
    assert list(schemes) == sorted(schemes)
    assert {"jwt", "apikey"} <= set(schemes)
    for factory in schemes.values():
        assert verifyObject(IAuthSchemeFactory, factory)
        assert IPlugin.providedBy(factory)


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


def test_fake_request_carries_what_schemes_read() -> None:
    request = fake_request(
        "/b/k", headers={"Authorization": "Bearer t"}, args={"token": ["q"]}, client_ip="192.0.2.4"
    )
    assert request.getHeader(b"authorization") == b"Bearer t"
    assert request.args == {b"token": [b"q"]}
    assert request.getClientAddress().host == "192.0.2.4"


def test_result_of_requires_a_fired_deferred() -> None:
    from twisted.internet.defer import Deferred

    with pytest.raises(AssertionError):
        result_of(Deferred())


class TestApiKeyContract(AuthSchemeContract):
    """The auth scheme contract on a ``Clock``: every Deferred it returns has already fired."""

    def setup_method(self) -> None:
        factory = find(IAuthSchemeFactory, "apikey", "auth.scheme", plugins)
        self.scheme = factory.build({"keys": {"k-1": "robot"}}, "auth.settings", Clock())

    def accepted_request(self) -> IRequest:
        return fake_request(headers={"X-API-Key": "k-1"})

    def refused_request(self) -> IRequest:
        return fake_request(headers={"X-API-Key": "k-2"})


def test_the_kit_imports_without_pytest() -> None:
    """The runtime install has no pytest: ``yatagarasu.testing`` must not need it."""
    script = textwrap.dedent(
        """
        import sys

        class NoTestTools:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {"pytest", "_pytest", "pytest_twisted"}:
                    raise ImportError(f"{name} is not installed here")

        sys.meta_path.insert(0, NoTestTools())
        import yatagarasu.testing

        print(len(yatagarasu.testing.__all__))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 8

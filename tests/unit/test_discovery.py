"""Plugin discovery, and the third-party ``apikey`` scheme tested the way docs/plugins.md says."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from yatagarasu import plugins
from yatagarasu.discovery import available
from yatagarasu.interfaces import IAuthSchemeFactory


def test_builtin_and_third_party_schemes_are_discovered() -> None:
    schemes = available(IAuthSchemeFactory, plugins)
    assert list(schemes) == sorted(schemes)
    assert {"jwt", "apikey"} <= set(schemes)
    for factory in schemes.values():
        assert verifyObject(IAuthSchemeFactory, factory)
        assert IPlugin.providedBy(factory)

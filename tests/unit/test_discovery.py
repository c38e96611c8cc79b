"""Plugin discovery (yatagarasu.discovery): ``available`` and ``find`` in a plugin package."""

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

"""Plugin discovery (yatagarasu.discovery): ``available`` and ``find`` in a plugin package."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface
from zope.interface.verify import verifyObject

from yatagarasu import plugins
from yatagarasu.config import ConfigError
from yatagarasu.discovery import available, find
from yatagarasu.interfaces import IAuthSchemeFactory


def test_builtin_and_third_party_schemes_are_discovered() -> None:
    schemes = available(IAuthSchemeFactory, plugins)
    assert list(schemes) == sorted(schemes)
    assert {"jwt", "apikey"} <= set(schemes)
    for factory in schemes.values():
        assert verifyObject(IAuthSchemeFactory, factory)
        assert IPlugin.providedBy(factory)


class IGadget(Interface):
    """An interface only the test plugin packages below provide."""

    name = Attribute("the plugin's name")


@pytest.fixture
def plugin_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, str]], ModuleType]]:
    """``plugin_package({module: source})`` → a fresh importable package of dropin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(modules: dict[str, str]) -> ModuleType:
        name = f"gadget_plugins_{uuid.uuid4().hex}"
        made.append(name)
        directory = tmp_path / name
        directory.mkdir()
        (directory / "__init__.py").write_text("")
        header = (
            "from twisted.plugin import IPlugin\n"
            "from zope.interface import implementer\n"
            "from tests.unit.test_discovery import IGadget\n\n"
            "@implementer(IPlugin, IGadget)\n"
            "class Gadget:\n"
            "    def __init__(self, name):\n"
            "        self.name = name\n\n"
        )
        for module, body in modules.items():
            (directory / f"{module}.py").write_text(header + body)
        return importlib.import_module(name)

    yield make
    for name in [m for m in sys.modules if m.partition(".")[0] in made]:
        del sys.modules[name]


def test_available_lists_the_package_plugins_by_name(
    plugin_package: Callable[[dict[str, str]], ModuleType],
) -> None:
    package = plugin_package(
        {"one": 'zeta = Gadget("zeta")\nalpha = Gadget("alpha")\n', "two": 'mid = Gadget("mid")\n'}
    )
    found = available(IGadget, package)
    assert list(found) == ["alpha", "mid", "zeta"]
    assert all(verifyObject(IGadget, plugin) for plugin in found.values())
    assert available(IGadget, plugins) == {}  # the built-in package has none of these
    assert available(IAuthSchemeFactory, package) == {}


def test_find_returns_the_named_plugin(
    plugin_package: Callable[[dict[str, str]], ModuleType],
) -> None:
    package = plugin_package({"one": 'a = Gadget("a")\nb = Gadget("b")\n'})
    assert find(IGadget, "b", "gadgets[0].kind", package).name == "b"


def test_an_unknown_name_is_a_config_error_naming_the_key_and_the_choices(
    plugin_package: Callable[[dict[str, str]], ModuleType],
) -> None:
    package = plugin_package({"one": 'a = Gadget("a")\nb = Gadget("b")\n'})
    with pytest.raises(ConfigError) as info:
        find(IGadget, "c", "gadgets[1].kind", package)
    assert info.value.path == "gadgets[1].kind"
    assert "unknown IGadget 'c' (available: a, b)" in str(info.value)
    with pytest.raises(ConfigError, match=r"available: none"):
        find(IGadget, "a", "gadget", plugin_package({}))


def test_two_plugins_with_one_name_are_refused(
    plugin_package: Callable[[dict[str, str]], ModuleType],
) -> None:
    package = plugin_package({"one": 'a = Gadget("same")\n', "two": 'b = Gadget("same")\n'})
    with pytest.raises(ConfigError, match=r"two installed IGadget plugins are both named 'same'"):
        available(IGadget, package)

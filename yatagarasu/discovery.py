"""
Finding plugins by interface and name (``twisted.plugin.getPlugins``) in a plugin package.

The package is a parameter: the composition root passes ``yatagarasu.plugins`` (built-in
dropins, extended with every installed distribution's), tests may pass their own.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from twisted.plugin import getPlugins
from zope.interface.interface import InterfaceClass

from yatagarasu.errors import ConfigError


def available(interface: InterfaceClass, package: ModuleType) -> dict[str, Any]:
    """
    Every installed plugin providing ``interface``, by name.

    :param interface: e.g. ``ICacheLayerFactory``.
    :param package: the plugin package to search (``yatagarasu.plugins``).
    :returns: ``{name: plugin}``, sorted by name.
    :raises ConfigError: when two installed plugins claim the same name.
    """
    found: dict[str, Any] = {}
    plugin: Any
    for plugin in getPlugins(interface, package):  # type: ignore[arg-type]
        name = plugin.name
        if name in found and found[name] is not plugin:
            raise ConfigError(
                "", f"two installed {interface.__name__} plugins are both named {name!r}"
            )
        found[name] = plugin
    return dict(sorted(found.items()))


def find(interface: InterfaceClass, name: str, path: str, package: ModuleType) -> Any:
    """
    The plugin providing ``interface`` with this name.

    :param interface: e.g. ``IAuthSchemeFactory``.
    :param name: the name from the configuration.
    :param path: the dotted key path that named it, for errors.
    :param package: the plugin package to search (``yatagarasu.plugins``).
    :returns: the plugin.
    :raises ConfigError: when there is none, listing the available names.
    """
    plugins_by_name = available(interface, package)
    if name not in plugins_by_name:
        names = ", ".join(plugins_by_name) or "none"
        raise ConfigError(path, f"unknown {interface.__name__} {name!r} (available: {names})")
    return plugins_by_name[name]

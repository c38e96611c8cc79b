"""``${VAR}`` and ``${VAR:-default}`` expansion in configuration strings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from yatagarasu.errors import ConfigError

_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class Expanded(str):
    """
    A string that held ``${VAR}`` references, expanded. Where the schema wants a number or a
    boolean, such a string is read as one (``port: ${PORT}``); a string written as such in
    the YAML document stays a string (``port: "8080"`` is an error).
    """

    __slots__ = ()


def expand_string(value: str, environ: Mapping[str, str], path: str) -> str:
    """
    Replace every ``${VAR}`` / ``${VAR:-default}`` in ``value``.

    :param value: the raw string from the YAML document.
    :param environ: the environment to read variables from.
    :param path: dotted key path of the value, for error messages.
    :returns: the expanded string.
    :raises ConfigError: when a variable without default is not set.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group("name")
        if name in environ:
            return environ[name]
        default = match.group("default")
        if default is None:
            raise ConfigError(
                path, f"environment variable {name} is not set (use ${{{name}:-default}})"
            )
        return default

    return _REFERENCE.sub(substitute, value)


def expand_tree(node: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """
    Expand environment references in every string of a parsed YAML tree.

    :param node: a value from ``yaml.safe_load``.
    :param environ: the environment to read variables from.
    :param path: dotted key path of ``node``.
    :returns: a new tree with expanded strings (:class:`Expanded`; mapping keys are left
        alone).
    """
    if isinstance(node, str):
        if _REFERENCE.search(node) is None:
            return node
        return Expanded(expand_string(node, environ, path))
    if isinstance(node, dict):
        return {
            key: expand_tree(value, environ, f"{path}.{key}" if path else str(key))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [expand_tree(item, environ, f"{path}[{i}]") for i, item in enumerate(node)]
    return node

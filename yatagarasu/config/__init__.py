"""Loading and validating the YAML configuration (see docs/configuration.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from yatagarasu.config.environ import expand_tree
from yatagarasu.config.schema import Config
from yatagarasu.config.typed import from_raw
from yatagarasu.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


def parse_config(document: Any, environ: Mapping[str, str] | None = None) -> Config:
    """
    Validate a parsed YAML document and build the frozen :class:`Config`.

    This is the one validator used at startup, by ``--check`` and on reload.

    :param document: the result of ``yaml.safe_load``.
    :param environ: environment for ``${VAR}`` expansion (default: ``os.environ``).
    :returns: the configuration.
    :raises ConfigError: naming the dotted key path of the first problem.
    """
    if not isinstance(document, Mapping):
        raise ConfigError("", "the configuration must be a YAML mapping with a 'buckets' list")
    expanded = expand_tree(dict(document), os.environ if environ is None else environ)
    return from_raw(Config, expanded, "")


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read, parse and validate a configuration file.

    :param path: path of the YAML file.
    :param environ: environment for ``${VAR}`` expansion (default: ``os.environ``).
    :returns: the configuration.
    :raises ConfigError: when the file cannot be read, is not YAML, or is invalid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError("", f"{path} is not valid YAML{where}: {problem}") from None
    return parse_config(document, environ)

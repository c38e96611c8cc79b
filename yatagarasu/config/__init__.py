"""Loading and validating the YAML configuration (see docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from yatagarasu.config.environ import expand_tree
from yatagarasu.config.files import read_document
from yatagarasu.config.migrate import accept_synonyms, explain
from yatagarasu.config.schema import Config
from yatagarasu.config.typed import from_raw
from yatagarasu.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


def parse_config(document: Any, environ: Mapping[str, str] | None = None) -> Config:
    """
    Validate a parsed YAML document and build the frozen :class:`Config`.

    This is the one validator used at startup, by ``--check`` and on reload. The Rust
    Yatagarasu spellings it reads itself (:func:`yatagarasu.config.migrate.accept_synonyms`)
    are listed in :attr:`Config.deprecations`.

    :param document: the result of ``yaml.safe_load``.
    :param environ: environment for ``${VAR}`` expansion (default: ``os.environ``).
    :returns: the configuration.
    :raises ConfigError: naming the dotted key path of the first problem.
    """
    if not isinstance(document, Mapping):
        raise ConfigError("", "the configuration must be a YAML mapping with a 'buckets' list")
    document, deprecations = accept_synonyms(document)
    expanded = expand_tree(dict(document), os.environ if environ is None else environ)
    config = from_raw(Config, expanded, "")
    return dataclasses.replace(config, deprecations=deprecations) if deprecations else config


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read, parse and validate a configuration file.

    :param path: path of the YAML file.
    :param environ: environment for ``${VAR}`` expansion (default: ``os.environ``).
    :returns: the configuration.
    :raises ConfigError: when the file cannot be read, is not YAML, or is invalid (naming the
        migrate command when a Rust Yatagarasu spelling is the cause).
    """
    document = read_document(path)
    try:
        return parse_config(document, environ)
    except ConfigError as e:
        raise explain(e, document, path) from None

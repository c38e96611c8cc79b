"""Reading a YAML configuration file into a parsed document, with errors that say where."""

from __future__ import annotations

from typing import Any

import yaml

from yatagarasu.errors import ConfigError


def read_document(path: str) -> Any:
    """
    :param path: path of the YAML file.
    :returns: what ``yaml.safe_load`` made of it (``${VAR}`` references not expanded).
    :raises ConfigError: when the file cannot be read or is not YAML.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError("", f"{path} is not valid YAML{where}: {problem}") from None

"""Reading a YAML configuration file into a parsed document, with errors that say where."""

from __future__ import annotations

from typing import Any

import yaml

from yatagarasu.errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping of the document has the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """
    ``yaml.SafeLoader``, except that a key given twice in one mapping is an error: PyYAML
    would keep the last one, silently dropping a whole section written earlier. Keys brought
    in by a merge (``<<: *anchor``) may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first != key_node.start_mark.line:
                raise _DuplicateKey(
                    None,
                    None,
                    f"key {key!r} given twice (lines {first + 1} and "
                    f"{key_node.start_mark.line + 1}): the second would replace the first",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def read_document(path: str) -> Any:
    """
    :param path: path of the YAML file.
    :returns: what ``yaml.safe_load`` made of it (``${VAR}`` references not expanded).
    :raises ConfigError: when the file cannot be read or is not YAML, or a mapping of it has
        a key twice.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)  # a SafeLoader
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not UTF-8 text") from None
    except _DuplicateKey as e:
        raise ConfigError("", f"{path}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError("", f"{path} is not valid YAML{where}: {problem}") from None

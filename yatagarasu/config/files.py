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

    Each mapping's own keys are checked the first time its node is flattened, before the
    merge adds the anchored mapping's keys to it (PyYAML flattens an anchored mapping in
    place when a merge uses it, so the node may come by again, merged).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._refuse_duplicates(node)
        super().flatten_mapping(node)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping says so
                continue
            line = key_node.start_mark.line
            if first is not None:
                where = f"line {line + 1}" if first == line else f"lines {first + 1} and {line + 1}"
                raise _DuplicateKey(
                    None,
                    None,
                    f"key {key!r} given twice ({where}): the second would replace the first",
                    key_node.start_mark,
                )
            seen[key] = line


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

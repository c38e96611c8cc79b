"""
Typed configuration: parsed YAML values turned into frozen dataclasses (:func:`from_raw`),
with dotted-path errors and "did you mean" hints for unknown keys.

The schema *is* the frozen dataclasses in :mod:`yatagarasu.config.schema`: their fields, type
hints and defaults say what is accepted. Field metadata may carry ``key`` (the YAML key, when
it is not a Python name: ``global``), ``aliases`` (other spellings of the same key), or
``internal`` (a field that is not a YAML key: the loader sets it). A class
may list keys of features that are recognised but not built yet in ``UNSUPPORTED`` (key → why),
and may define ``check(path)`` for rules that span fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from yatagarasu.config.environ import Expanded
from yatagarasu.errors import ConfigError

T = TypeVar("T")

#: what ``${VAR}`` may expand to where an integer or a number is wanted
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def join(path: str, key: str) -> str:
    """
    Extend a dotted key path.

    :param path: the parent path (``""`` for the document root).
    :param key: the child key.
    :returns: ``path.key`` (or ``key`` at the root).
    """
    return f"{path}.{key}" if path else key


def unknown_key_message(key: str, known: typing.Iterable[str]) -> str:
    """
    Explain an unknown key, with a "did you mean" hint when a known key is close.

    :param key: the key found in the document.
    :param known: the keys accepted at that place.
    :returns: the error message.
    """
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key{hint}"


def from_raw(cls: type[T], raw: Any, path: str) -> T:
    """
    Turn a parsed YAML mapping into an instance of the dataclass ``cls``.

    :param cls: a frozen dataclass of the schema.
    :param raw: the parsed value (``None`` means an empty mapping).
    :param path: dotted key path of ``raw``, for error messages.
    :returns: the validated instance.
    :raises ConfigError: naming the dotted path of the first problem found.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    spellings: dict[str, str] = {}
    for f in fields.values():
        if f.metadata.get("internal"):
            continue
        spellings[f.metadata.get("key", f.name)] = f.name
        for alias in f.metadata.get("aliases", ()):
            spellings[alias] = f.name
    unsupported: Mapping[str, str] = getattr(cls, "UNSUPPORTED", {})
    values: dict[str, Any] = {}
    for key, value in raw.items():
        key_path = join(path, str(key))
        if not isinstance(key, str):
            raise ConfigError(key_path, "keys must be strings")
        if key in unsupported:
            raise ConfigError(key_path, f"not supported yet ({unsupported[key]})")
        name = spellings.get(key)
        if name is None:
            raise ConfigError(key_path, unknown_key_message(key, [*spellings, *unsupported]))
        if name in values:
            raise ConfigError(key_path, f"given twice (also as '{name}' or one of its aliases)")
        values[name] = convert(hints[name], value, key_path)
    for f in fields.values():
        if (
            f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(join(path, f.name), "is required")
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        check(path)
    return instance


def from_raw_beside(cls: type[T], raw: Any, path: str, others: typing.Iterable[str]) -> T:
    """
    :func:`from_raw` for a section that also holds keys validated elsewhere (plugin sections
    such as ``cache.memory``): an unknown key's hint considers those too.

    :param cls: a frozen dataclass of the schema.
    :param raw: the section without the other keys.
    :param path: its dotted key path.
    :param others: the other keys the section may hold.
    :returns: the validated instance.
    :raises ConfigError: naming the dotted path of the first problem found.
    """
    try:
        return from_raw(cls, raw, path)
    except ConfigError as e:
        if not e.message.startswith("unknown key"):
            raise
        key = e.path.rsplit(".", 1)[-1]
        spellings = [
            name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            for name in (f.metadata.get("key", f.name), *f.metadata.get("aliases", ()))
        ]
        raise ConfigError(e.path, unknown_key_message(key, [*spellings, *others])) from None


def convert(hint: Any, value: Any, path: str) -> Any:
    """
    Convert one parsed value to the type named by a type hint.

    :param hint: the field's type hint.
    :param value: the parsed YAML value.
    :param path: dotted key path of the value.
    :returns: the converted value.
    :raises ConfigError: when the value does not fit the type.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        for inner in alternatives[:-1]:
            try:
                return convert(inner, value, path)
            except ConfigError:
                continue
        return convert(alternatives[-1], value, path)
    if origin is typing.Literal:
        if isinstance(value, Expanded) and value not in args:
            for arg in args:
                if type(arg) is not str and _from_environment(value, type(arg)) == arg:
                    return arg  # not_found_status: ${STATUS}
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(path, f"must be one of {choices}, got {_plain(value)!r}")
        return args[args.index(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_describe(value)}")
        return tuple(convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin in (Mapping, dict) or hint is Mapping:
        if value is None:
            return types.MappingProxyType({})
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {_describe(value)}")
        return types.MappingProxyType(dict(value))
    if dataclasses.is_dataclass(hint):
        return from_raw(typing.cast(type[Any], hint), value, path)
    if isinstance(value, Expanded) and hint in (bool, int, float):
        value = _from_environment(value, hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(path, f"expected a string, got {_describe(value)}")
        return str(value)
    if hint is Any:
        return value
    raise TypeError(f"unsupported schema type {hint!r} at {path}")


def _from_environment(value: Expanded, wanted: type) -> Any:
    """
    :param value: an expanded ``${VAR}`` string where a number or a boolean is wanted.
    :param wanted: ``bool``, ``int`` or ``float``.
    :returns: what ``value`` spells of that type (``true``/``false`` in any case; a decimal
        integer; a finite number), or ``value`` itself when it spells none (the caller's
        type check then reports it, saying it came from the environment).
    """
    text = value.strip()
    if wanted is bool:
        return text.lower() == "true" if text.lower() in ("true", "false") else value
    if wanted is int:
        return int(text) if _INTEGER.fullmatch(text) else value
    if wanted is float and _NUMBER.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else value
    return value


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, str) else value


def _describe(value: Any) -> str:
    if isinstance(value, Expanded):
        return f"str {str(value)!r} (from the environment)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"

"""
Rust Yatagarasu configuration files turned into this version's canonical YAML.

:func:`migrate` rewrites a parsed document *before* ``${VAR}`` expansion (references stay as
written) and returns one :class:`Note` per Rust key it met: renamed, dropped, converted, added
or kept, and what the Rust version itself did with the key. Several keys of the Rust project's
examples were never read by its code; the notes say so instead of pretending they worked. The
``yatagarasu-config migrate`` command (:mod:`yatagarasu.config_command`) prints them.

:func:`accept_synonyms` is the part the loader applies by itself, with a deprecation warning
(the unambiguous ``server.threads``); :func:`explain` adds the migrate command to a
configuration error that a Rust spelling caused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from yatagarasu.config.files import read_document
from yatagarasu.config.schema import DEFAULT_ADMIN_PREFIX
from yatagarasu.errors import ConfigError

COMMAND = "yatagarasu-config migrate"
IGNORED = "ignored by the Rust version too"
_LAYERS = ("memory", "disk", "redis")
_MIB = 1024 * 1024
#: Where the admin API moves when a bucket is at /admin, first free one wins.
_ADMIN_CHOICES = ("/_admin", "/_yatagarasu/admin")
_HEADER = (
    "# Written by yatagarasu-config migrate from a Rust Yatagarasu configuration.\n"
    "# The comments of the original file are not kept.\n"
)


@dataclass(frozen=True)
class Note:
    """
    What the migration did with one key.

    :ivar path: dotted path of the key in the Rust file (``cache.memory.max_entry_size_mb``).
    :ivar action: ``renamed``, ``dropped``, ``converted``, ``added`` or ``kept``.
    :ivar detail: how (``to cache.memory.max_item_size_mb``).
    :ivar rust: what the Rust version did with the key.
    :ivar target: the dotted path it has in the migrated file, when it moved.
    """

    path: str
    action: str
    detail: str
    rust: str
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {' '.join(filter(None, (self.action, self.detail)))}; {self.rust}"

    @property
    def changes(self) -> bool:
        """Whether the key had to change (``kept`` keys are valid as they are)."""
        return self.action != "kept"


@dataclass
class Migration:
    """
    :ivar document: the migrated document (strings as written, ``${VAR}`` included).
    :ivar notes: one per Rust key met, in document order.
    """

    document: dict[str, Any]
    notes: list[Note] = field(default_factory=list)

    def yaml(self) -> str:
        """:returns: the migrated document as YAML, keys in their original order."""
        body = yaml.safe_dump(
            self.document, sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        return _HEADER + body


def migrate_file(path: str) -> Migration:
    """
    :param path: a Rust Yatagarasu (or already migrated) configuration file.
    :returns: the migration.
    :raises ConfigError: the file cannot be read, is not YAML, is not a mapping, or holds a
        value the migration cannot convert.
    """
    return migrate(read_document(path))


def migrate(document: Any) -> Migration:
    """
    :param document: the parsed YAML document, not expanded.
    :returns: the migrated copy and the notes; ``document`` is not changed.
    :raises ConfigError: when it is not a mapping, or a value cannot be converted.
    """
    if not isinstance(document, Mapping):
        raise ConfigError("", "the configuration must be a YAML mapping with a 'buckets' list")
    migration = Migration(copy.deepcopy(dict(document)))
    doc, note = migration.document, migration.notes.append
    server = _section(doc, "server")
    if server is not None:
        _server(server, note)
    metrics = _section(doc, "metrics")
    if metrics is not None:
        _rename(
            metrics, "metrics", "addr", "address", f"{IGNORED} (it had no metrics section)", note
        )
        _kept(
            "metrics",
            f"{IGNORED} (it served /metrics on the main port):"
            " metrics.port now moves /metrics to a listener of its own",
            note,
        )
    logging = _section(doc, "logging")
    if logging is not None:
        _logging(logging, note)
    cache = _section(doc, "cache")
    if cache is not None:
        _cache(cache, _bucket_caching(doc), note)
    _drop(
        doc,
        "",
        "authorization",
        "authorization is set per bucket: buckets[].authorization",
        f"{IGNORED} (it read authorization per bucket only)",
        note,
    )
    for path, jwt in _jwt_sections(doc):
        _jwt(jwt, path, note)
    for i, bucket in _buckets(doc):
        _bucket(bucket, f"buckets[{i}]", note)
    _admin_prefix(doc, note)
    return migration


def accept_synonyms(document: Any) -> tuple[Any, tuple[str, ...]]:
    """
    The Rust spellings the loader reads itself: ``server.threads`` as ``server.workers``.

    :param document: the parsed document.
    :returns: the document to validate (a copy when something was renamed) and one
        deprecation warning per synonym read.
    :raises ConfigError: when a synonym is given beside the key it stands for.
    """
    server = document.get("server") if isinstance(document, Mapping) else None
    if not isinstance(server, Mapping) or "threads" not in server:
        return document, ()
    if "workers" in server:
        raise ConfigError(
            "server.threads",
            "the Rust Yatagarasu's spelling of server.workers, given beside it: keep workers",
        )
    renamed = {("workers" if k == "threads" else k): v for k, v in server.items()}
    warning = (
        "server.threads: a Rust Yatagarasu key, read as server.workers (worker processes);"
        f" rewrite the file with: {COMMAND} FILE"
    )
    return {**document, "server": renamed}, (warning,)


def explain(error: ConfigError, document: Any, path: str) -> ConfigError:
    """
    :param error: a configuration error of the file at ``path``.
    :param document: that file's parsed document.
    :param path: the file, named in the hint.
    :returns: ``error`` with ``...; a Rust Yatagarasu key; run: yatagarasu-config migrate
        FILE`` when a key the migration changes caused it, else ``error`` itself.
    """
    if COMMAND in error.message:
        return error
    try:
        notes = migrate(document).notes
    except ConfigError:
        return error
    for note in notes:
        if not note.changes:
            continue
        if error.path == note.target or _within(error.path, note.path):
            key = (
                "a Rust Yatagarasu key"
                if _within(error.path, note.path)
                else (f"written {note.path}, a Rust Yatagarasu key")
            )
            return ConfigError(error.path, f"{error.message}; {key}; run: {COMMAND} {path}")
    return error


def explain_file(error: ConfigError, path: str) -> ConfigError:
    """:func:`explain` for the file at ``path`` (read again; ``error`` as is if unreadable)."""
    try:
        document = read_document(path)
    except ConfigError:
        return error
    return explain(error, document, path)


Emit = Callable[[Note], None]


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def _section(parent: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = parent.get(key)
    return value if isinstance(value, dict) else None


def _rename(
    mapping: dict[str, Any],
    path: str,
    old: str,
    new: str,
    rust: str,
    note: Emit,
    convert: Callable[[Any, str], Any] | None = None,
) -> None:
    """Rename ``old`` to ``new`` in place (same position), or drop it when ``new`` is given."""
    if old not in mapping:
        return
    old_path, new_path = f"{path}.{old}", f"{path}.{new}"
    if new in mapping:
        del mapping[old]
        note(Note(old_path, "dropped", f"({new_path} is also given)", rust))
        return
    value = mapping[old] if convert is None else convert(mapping[old], old_path)
    items = [((new, value) if k == old else (k, v)) for k, v in mapping.items()]
    mapping.clear()
    mapping.update(items)
    shown = f" = {value!r}" if convert is not None else ""
    note(Note(old_path, "renamed", f"to {new_path}{shown}", rust, new_path))


def _convert(
    mapping: dict[str, Any], key: str, value: Any, path: str, rust: str, note: Emit
) -> None:
    """Replace the value of ``key`` (at ``path``) in place."""
    detail = f"{mapping[key]!r} to {value!r}"
    mapping[key] = value
    note(Note(path, "converted", detail, rust, path))


def _kept(path: str, rust: str, note: Emit) -> None:
    note(Note(path, "kept", "", rust))


def _drop(mapping: dict[str, Any], path: str, key: str, why: str, rust: str, note: Emit) -> None:
    if key in mapping:
        del mapping[key]
        note(Note(f"{path}.{key}" if path else key, "dropped", f"({why})", rust))


def _server(server: dict[str, Any], note: Emit) -> None:
    _rename(
        server,
        "server",
        "addr",
        "address",
        "not a Rust key (the Rust version read server.address and server.port)",
        note,
    )
    _rename(
        server,
        "server",
        "threads",
        "workers",
        "read by the Rust version as worker threads of its one process; here workers are"
        " processes (server.threads is also accepted as is, with a deprecation warning)",
        note,
    )


def _logging(logging: dict[str, Any], note: Emit) -> None:
    unread = f"{IGNORED} (it did not read the logging section)"
    if logging.get("format") == "pretty":
        _convert(logging, "format", "text", "logging.format", unread, note)
    _kept("logging", f"{unread}: level, format and file now take effect", note)


def _mib(value: Any, path: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"cannot convert {value!r} to MiB: write max_item_size_mb instead")
    mib = value / _MIB
    return int(mib) if mib == int(mib) else mib


def _cache(cache: dict[str, Any], bucket_caching: bool, note: Emit) -> None:
    if "layers" in cache and "cache_layers" not in cache and cache["layers"] == []:
        # An empty list would be refused here; the Rust version never read it and cached in
        # memory, which the default cache_layers keeps doing.
        _drop(
            cache,
            "cache",
            "layers",
            "an empty list: cache_layers keeps its default, [memory], as the Rust version did",
            f"{IGNORED} (it cached in memory, the default cache_layers)",
            note,
        )
    _rename(
        cache,
        "cache",
        "layers",
        "cache_layers",
        f"{IGNORED} (it read cache_layers, default [memory]): the layers listed now take effect",
        note,
    )
    memory = _section(cache, "memory")
    if memory is not None:
        item = f"{IGNORED} (it read max_item_size_mb, default 10)"
        total = f"{IGNORED} (it read max_cache_size_mb, default 1024)"
        path = "cache.memory"
        _rename(memory, path, "max_entry_size_mb", "max_item_size_mb", item, note)
        _rename(memory, path, "max_entry_size_bytes", "max_item_size_mb", item, note, _mib)
        _rename(memory, path, "max_memory_cache_mb", "max_cache_size_mb", total, note)
        _rename(memory, path, "max_memory_cache_size_mb", "max_cache_size_mb", total, note)
    redis = _section(cache, "redis")
    if redis is not None:
        path = "cache.redis"
        _rename(
            redis,
            path,
            "operation_timeout_ms",
            "timeout_ms",
            f"{IGNORED} (it always used 2000 ms)",
            note,
        )
        _drop(
            redis,
            path,
            "connection_timeout_ms",
            "cache.redis.timeout_ms bounds every Redis call, connecting included",
            f"{IGNORED} (it always used 5000 ms)",
            note,
        )
        _rename(redis, path, "max_pool_size", "pool_size", f"{IGNORED} (it always used 10)", note)
        _drop(
            redis,
            path,
            "min_pool_size",
            "the pool keeps cache.redis.pool_size connections",
            f"{IGNORED} (it always used 1)",
            note,
        )
    if cache.get("enabled") is True or bucket_caching:
        _list_enabled_layers(cache, note)


def _list_enabled_layers(cache: dict[str, Any], note: Emit) -> None:
    """A layer section with ``enabled: true`` that ``cache_layers`` does not name is added."""
    listed = cache.get("cache_layers", ["memory"])
    if not isinstance(listed, list):
        return
    for name in _LAYERS:
        section = cache.get(name)
        if isinstance(section, Mapping) and section.get("enabled") is True and name not in listed:
            listed = [*listed, name]
            cache["cache_layers"] = listed
            note(
                Note(
                    f"cache.{name}.enabled",
                    "added",
                    f"{name} to cache.cache_layers",
                    f"{IGNORED}: it used only the layers in cache_layers, so it never used"
                    f" this {name} layer (set enabled: false to keep it off)",
                    "cache.cache_layers",
                )
            )


def _bucket_caching(doc: Mapping[str, Any]) -> bool:
    return any(
        isinstance(b.get("cache"), Mapping) and b["cache"].get("enabled") is True
        for _, b in _buckets(doc)
    )


def _buckets(doc: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    buckets = doc.get("buckets")
    if isinstance(buckets, list):
        for i, bucket in enumerate(buckets):
            if isinstance(bucket, dict):
                yield i, bucket


def _jwt_sections(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``jwt`` mappings: top-level, ``buckets[].jwt`` and ``buckets[].auth.jwt``."""
    top = _section(doc, "jwt")
    if top is not None:
        yield "jwt", top
    for i, bucket in _buckets(doc):
        own = _section(bucket, "jwt")
        if own is not None:
            yield f"buckets[{i}].jwt", own
        auth = _section(bucket, "auth")
        nested = _section(auth, "jwt") if auth is not None else None
        if nested is not None:
            yield f"buckets[{i}].auth.jwt", nested


def _jwt(jwt: dict[str, Any], path: str, note: Emit) -> None:
    if path != "jwt":
        _kept(
            path,
            f"{IGNORED} (it read only auth.enabled per bucket and verified every bucket with"
            " the top-level jwt): these settings now apply to this bucket",
            note,
        )
    claims = (
        "claims_verification" if "claims" not in jwt and "claims_verification" in jwt else "claims"
    )
    _rename(
        jwt,
        path,
        "claims_verification",
        "claims",
        f"{IGNORED} (its key was claims: these rules were never checked)",
        note,
    )
    for key, written in (("claims", claims), ("admin_claims", "admin_claims")):
        rules = jwt.get(key)
        if isinstance(rules, list):
            for i, rule in enumerate(rules):
                if isinstance(rule, dict):
                    _listed_value(rule, f"{path}.{written}[{i}]", note)
    sources = jwt.get("token_sources")
    if isinstance(sources, list):
        for i, source in enumerate(sources):
            if isinstance(source, dict):
                _token_source(source, f"{path}.token_sources[{i}]", note)


def _listed_value(rule: dict[str, Any], path: str, note: Emit) -> None:
    """``in``/``not_in`` with a scalar: ``"a,b"`` becomes ``[a, b]``."""
    value = rule.get("value")
    if rule.get("operator") not in ("in", "not_in") or isinstance(value, list) or value is None:
        return
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [value]
    rust = "a value that is not a list never matched in the Rust version (the rule refused"
    _convert(rule, "value", items, f"{path}.value", f"{rust} every token)", note)


def _token_source(source: dict[str, Any], path: str, note: Emit) -> None:
    _rename(
        source, path, "source_type", "type", "not a Rust key (the Rust version read type)", note
    )
    canonical = {"bearer_header": "bearer", "query_param": "query"}.get(str(source.get("type")))
    if canonical is not None:
        rust = "not a Rust token source type (it never found a token there)"
        _convert(source, "type", canonical, f"{path}.type", rust, note)
    _rename(source, path, "param_name", "name", "not a Rust key (the Rust version read name)", note)


def _bucket(bucket: dict[str, Any], path: str, note: Emit) -> None:
    cache = _section(bucket, "cache")
    if cache is not None:
        _rename(
            cache,
            f"{path}.cache",
            "default_ttl_seconds",
            "ttl_seconds",
            f"{IGNORED} (its key was ttl_seconds)",
            note,
        )
    authorization = _section(bucket, "authorization")
    if authorization is not None:
        _authorization(authorization, f"{path}.authorization", note)


#: the keys of each built-in authorizer type (the Rust version read one flat struct)
_AUTHORIZER_KEYS = {
    "opa": ("opa_url", "opa_policy_path", "opa_timeout_ms", "opa_cache_ttl_seconds",
            "opa_fail_mode"),
    "openfga": ("openfga_endpoint", "openfga_store_id", "openfga_authorization_model_id",
                "openfga_api_token", "openfga_timeout_ms", "openfga_cache_ttl_seconds",
                "openfga_fail_mode", "openfga_user_claim"),
}  # fmt: skip


def _authorization(authorization: dict[str, Any], path: str, note: Emit) -> None:
    """Keys of the other built-in type (``openfga_*`` in an ``opa`` block) are dropped."""
    kind = authorization.get("type")
    if kind not in _AUTHORIZER_KEYS:
        return
    _kept(path, "enforced by the Rust version, and by this one", note)
    mode_key = f"{kind}_fail_mode"
    mode = authorization.get(mode_key)
    if isinstance(mode, str) and mode not in ("open", "closed") and "${" not in mode:
        read_as = "open" if mode.lower() == "open" else "closed"
        rust = f"read as {read_as} (open in any letter case was open, every other value closed)"
        _convert(authorization, mode_key, read_as, f"{path}.{mode_key}", rust, note)
    for other, keys in _AUTHORIZER_KEYS.items():
        if other == kind:
            continue
        for key in keys:
            _drop(
                authorization,
                path,
                key,
                f"a {other} key in a type: {kind} block",
                f"{IGNORED} (it read only the {kind}_* keys for type: {kind})",
                note,
            )


def _admin_prefix(doc: dict[str, Any], note: Emit) -> None:
    """A bucket at (or under) ``/admin``: the admin API moves to a free prefix."""
    server = doc.get("server")
    if isinstance(server, Mapping) and "admin_path_prefix" in server:
        return
    prefixes = {i: _segments(b.get("path_prefix")) for i, b in _buckets(doc)}
    admin = _segments(DEFAULT_ADMIN_PREFIX)
    colliding = [i for i, segments in prefixes.items() if segments[: len(admin)] == admin]
    if not colliding:
        return
    used = set(prefixes.values())
    choice = next(c for c in _ADMIN_CHOICES if _segments(c) not in used)
    if not isinstance(server, dict):
        server = doc["server"] = {}
    server["admin_path_prefix"] = choice
    for i in colliding:
        note(
            Note(
                f"buckets[{i}].path_prefix",
                "added",
                f"server.admin_path_prefix: {choice} (the admin API moves there)",
                "the Rust version answered /admin/reload"
                " and /admin/cache/... itself and sent the other /admin paths to this bucket;"
                " now every /admin path reaches the bucket",
                "server.admin_path_prefix",
            )
        )


def _segments(prefix: Any) -> tuple[str, ...]:
    return tuple(s for s in prefix.split("/") if s) if isinstance(prefix, str) else ()

"""``yatagarasu-config migrate``: each Rust spelling, its report line, the loader's hints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.testing import MemoryReactorClock

from yatagarasu.config import ConfigError, load_config, parse_config
from yatagarasu.config.migrate import Migration, Note, accept_synonyms, explain, migrate
from yatagarasu.config_command import main
from yatagarasu.tap import first_generation

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rust_configs"
BUCKET = {"name": "b", "path_prefix": "/b", "s3": {"bucket": "b"}}


def doc(**sections: Any) -> dict[str, Any]:
    return {"buckets": [copy.deepcopy(BUCKET)], **sections}


def note_at(migration: Migration, path: str) -> Note:
    found = [n for n in migration.notes if n.path == path]
    assert len(found) == 1, [str(n) for n in migration.notes]
    return found[0]


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ("memory", "max_entry_size_mb", "max_item_size_mb"),
        ("memory", "max_memory_cache_mb", "max_cache_size_mb"),
        ("memory", "max_memory_cache_size_mb", "max_cache_size_mb"),
        ("redis", "operation_timeout_ms", "timeout_ms"),
        ("redis", "max_pool_size", "pool_size"),
    ],
)
def test_cache_layer_keys_are_renamed_and_were_ignored_by_rust(
    section: str, old: str, new: str
) -> None:
    migration = migrate(doc(cache={section: {"before": 1, old: 7, "after": 2}}))
    assert list(migration.document["cache"][section].items()) == [
        ("before", 1), (new, 7), ("after", 2)
    ]  # fmt: skip
    note = note_at(migration, f"cache.{section}.{old}")
    assert (note.action, note.target) == ("renamed", f"cache.{section}.{new}")
    assert str(note).startswith(
        f"cache.{section}.{old}: renamed to cache.{section}.{new}; ignored by the Rust version too"
    )


def test_a_rename_whose_target_is_given_drops_the_rust_key() -> None:
    migration = migrate(doc(cache={"memory": {"max_item_size_mb": 3, "max_entry_size_mb": 9}}))
    assert migration.document["cache"]["memory"] == {"max_item_size_mb": 3}
    note = note_at(migration, "cache.memory.max_entry_size_mb")
    assert str(note).startswith(
        "cache.memory.max_entry_size_mb: dropped (cache.memory.max_item_size_mb is also given)"
    )


@pytest.mark.parametrize(("size", "mib"), [(2097152, 2), (1572864, 1.5)])
def test_max_entry_size_bytes_becomes_mib(size: int, mib: float) -> None:
    migration = migrate(doc(cache={"memory": {"max_entry_size_bytes": size}}))
    assert migration.document["cache"]["memory"] == {"max_item_size_mb": mib}
    assert note_at(migration, "cache.memory.max_entry_size_bytes").target == (
        "cache.memory.max_item_size_mb"
    )


def test_max_entry_size_bytes_from_a_variable_cannot_be_converted() -> None:
    with pytest.raises(ConfigError) as caught:
        migrate(doc(cache={"memory": {"max_entry_size_bytes": "${BYTES}"}}))
    assert caught.value.path == "cache.memory.max_entry_size_bytes"
    assert "max_item_size_mb" in caught.value.message


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("connection_timeout_ms", "it always used 5000 ms"),
        ("min_pool_size", "it always used 1"),
    ],
)
def test_redis_keys_without_a_counterpart_are_dropped(key: str, why: str) -> None:
    migration = migrate(doc(cache={"redis": {key: 5, "redis_url": "redis://h"}}))
    assert migration.document["cache"]["redis"] == {"redis_url": "redis://h"}
    note = note_at(migration, f"cache.redis.{key}")
    assert note.action == "dropped"
    assert f"ignored by the Rust version too ({why})" in str(note)


def test_cache_layers_spelled_layers() -> None:
    migration = migrate(doc(cache={"enabled": True, "layers": ["memory", "disk"]}))
    assert migration.document["cache"] == {"enabled": True, "cache_layers": ["memory", "disk"]}
    note = note_at(migration, "cache.layers")
    assert "it read cache_layers, default [memory]" in note.rust
    assert migrate(doc(cache={"layers": ["disk"], "cache_layers": ["memory"]})).document[
        "cache"
    ] == {"cache_layers": ["memory"]}


def test_empty_layers_keep_the_memory_cache_the_rust_version_used() -> None:
    migration = migrate(doc(cache={"enabled": True, "layers": []}))
    assert migration.document["cache"] == {"enabled": True}
    assert note_at(migration, "cache.layers").action == "dropped"
    assert "cached in memory" in note_at(migration, "cache.layers").rust
    config = parse_config(migration.document, {})
    assert config.cache is not None and config.cache.get("enabled") is True


@pytest.mark.parametrize(
    ("cache", "layers"),
    [
        ({"enabled": True, "redis": {"enabled": True}}, ["memory", "redis"]),
        (
            {"enabled": True, "cache_layers": ["disk"], "redis": {"enabled": True}},
            ["disk", "redis"],
        ),
        ({"enabled": True, "layers": ["memory"], "disk": {"enabled": True}}, ["memory", "disk"]),
    ],
)
def test_an_enabled_layer_that_is_not_listed_is_added(
    cache: dict[str, Any], layers: list[str]
) -> None:
    migration = migrate(doc(cache=cache))
    assert migration.document["cache"]["cache_layers"] == layers
    name = layers[-1]
    note = note_at(migration, f"cache.{name}.enabled")
    assert note.action == "added"
    assert f"never used this {name} layer" in note.rust


def test_an_enabled_layer_of_a_disabled_cache_is_left_alone() -> None:
    migration = migrate(doc(cache={"enabled": False, "redis": {"enabled": True}}))
    assert "cache_layers" not in migration.document["cache"]
    assert not [n for n in migration.notes if n.changes]


def test_bucket_default_ttl_seconds() -> None:
    document = doc()
    document["buckets"][0]["cache"] = {"enabled": True, "default_ttl_seconds": 60}
    migration = migrate(document)
    assert migration.document["buckets"][0]["cache"] == {"enabled": True, "ttl_seconds": 60}
    assert note_at(migration, "buckets[0].cache.default_ttl_seconds").target == (
        "buckets[0].cache.ttl_seconds"
    )


def test_server_addr_and_threads() -> None:
    migration = migrate(doc(server={"addr": "0.0.0.0:8080", "threads": 4}))
    assert migration.document["server"] == {"address": "0.0.0.0:8080", "workers": 4}
    assert "not a Rust key" in note_at(migration, "server.addr").rust
    assert "worker threads of its one process" in note_at(migration, "server.threads").rust


def test_metrics_addr() -> None:
    migration = migrate(doc(metrics={"addr": "127.0.0.1:9090"}))
    assert migration.document["metrics"] == {"address": "127.0.0.1:9090"}
    assert "it had no metrics section" in note_at(migration, "metrics.addr").rust
    assert note_at(migration, "metrics").action == "kept"


def test_logging_format_pretty() -> None:
    migration = migrate(doc(logging={"level": "debug", "format": "pretty"}))
    assert migration.document["logging"] == {"level": "debug", "format": "text"}
    assert str(note_at(migration, "logging.format")).startswith(
        "logging.format: converted 'pretty' to 'text'; ignored by the Rust version too"
    )


def test_token_sources() -> None:
    sources = [
        {"source_type": "header", "name": "X-Token"},
        {"type": "query_param", "param_name": "t"},
        {"type": "bearer_header"},
    ]
    migration = migrate(doc(jwt={"secret": "s", "token_sources": sources}))
    assert migration.document["jwt"]["token_sources"] == [
        {"type": "header", "name": "X-Token"},
        {"type": "query", "name": "t"},
        {"type": "bearer"},
    ]
    assert note_at(migration, "jwt.token_sources[0].source_type").target == (
        "jwt.token_sources[0].type"
    )
    assert "never found a token" in note_at(migration, "jwt.token_sources[1].type").rust
    assert note_at(migration, "jwt.token_sources[1].param_name").action == "renamed"
    assert note_at(migration, "jwt.token_sources[2].type").action == "converted"


@pytest.mark.parametrize(
    ("value", "listed"),
    [("admin,internal-service", ["admin", "internal-service"]), ("ops", ["ops"]), (3, [3])],
)
def test_claims_verification_with_in_and_a_scalar(value: Any, listed: list[Any]) -> None:
    rules = [
        {"claim": "aud", "operator": "equals", "value": "x"},
        {"claim": "role", "operator": "in", "value": value},
    ]
    migration = migrate(doc(jwt={"secret": "s", "claims_verification": rules}))
    assert migration.document["jwt"]["claims"] == [
        {"claim": "aud", "operator": "equals", "value": "x"},
        {"claim": "role", "operator": "in", "value": listed},
    ]
    assert "these rules were never checked" in note_at(migration, "jwt.claims_verification").rust
    note = note_at(migration, "jwt.claims_verification[1].value")
    assert (note.action, note.target) == ("converted", "jwt.claims_verification[1].value")
    assert "never matched" in note.rust


def test_per_bucket_jwt_is_kept_and_said_to_be_ignored_by_rust() -> None:
    document = doc()
    document["buckets"][0]["auth"] = {"enabled": True, "jwt": {"secret": "s"}}
    migration = migrate(document)
    assert migration.document == document
    note = note_at(migration, "buckets[0].auth.jwt")
    assert note.action == "kept"
    assert "verified every bucket with the top-level jwt" in note.rust


def test_authorization_is_kept_per_bucket_and_dropped_at_the_top_level() -> None:
    document = {"authorization": {"opa": {"url": "http://opa"}}, **doc()}
    document["buckets"][0]["authorization"] = {
        "type": "opa",
        "opa_url": "http://opa",
        "opa_policy_path": "yatagarasu/authz/allow",
        "openfga_store_id": "S",
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(document, {})
    assert str(caught.value).startswith("authorization: not supported yet (as a default")
    migration = migrate(document)
    assert "authorization" not in migration.document
    top = note_at(migration, "authorization")
    assert (top.action, top.rust) == (
        "dropped",
        "ignored by the Rust version too (it read authorization per bucket only)",
    )
    assert note_at(migration, "buckets[0].authorization").action == "kept"
    other = note_at(migration, "buckets[0].authorization.openfga_store_id")
    assert other.action == "dropped"
    assert "it read only the opa_* keys for type: opa" in other.rust
    assert migration.document["buckets"][0]["authorization"] == {
        "type": "opa",
        "opa_url": "http://opa",
        "opa_policy_path": "yatagarasu/authz/allow",
    }
    config = parse_config(migration.document, {})
    assert config.buckets[0].authorization == migration.document["buckets"][0]["authorization"]


@pytest.mark.parametrize(
    ("written", "migrated"),
    [("Open", "open"), ("deny", "closed"), ("CLOSED", "closed"), ("${MODE}", "${MODE}")],
)
def test_a_fail_mode_the_rust_version_read_leniently_is_converted(
    written: str, migrated: str
) -> None:
    document = doc()
    document["buckets"][0]["authorization"] = {
        "type": "opa", "opa_url": "http://opa", "opa_policy_path": "p", "opa_fail_mode": written
    }  # fmt: skip
    migration = migrate(document)
    assert migration.document["buckets"][0]["authorization"]["opa_fail_mode"] == migrated
    if written != migrated:
        note = note_at(migration, "buckets[0].authorization.opa_fail_mode")
        assert (note.action, note.detail) == ("converted", f"{written!r} to {migrated!r}")


def test_a_key_of_the_other_authorizer_names_the_migrate_command() -> None:
    document = doc()
    document["buckets"][0]["authorization"] = {
        "type": "openfga",
        "openfga_endpoint": "http://fga",
        "openfga_store_id": "S",
        "opa_timeout_ms": 5,
    }
    error = ConfigError("buckets[0].authorization.opa_timeout_ms", "unknown key")
    explained = explain(error, document, "rust.yaml")
    assert explained.message == (
        "unknown key; a Rust Yatagarasu key; run: yatagarasu-config migrate rust.yaml"
    )


def test_a_bucket_at_admin_moves_the_admin_api() -> None:
    document = doc()
    document["buckets"].append({"name": "adm", "path_prefix": "/admin", "s3": {"bucket": "a"}})
    migration = migrate(document)
    assert migration.document["server"] == {"admin_path_prefix": "/_admin"}
    note = note_at(migration, "buckets[1].path_prefix")
    assert (note.action, note.target) == ("added", "server.admin_path_prefix")
    assert parse_config(migration.document, {}).server.admin_path_prefix == "/_admin"
    document["buckets"][0]["path_prefix"] = "/_admin"
    assert migrate(document).document["server"] == {"admin_path_prefix": "/_yatagarasu/admin"}
    document["server"] = {"admin_path_prefix": "/ops"}
    assert not [n for n in migrate(document).notes if n.changes]


def test_references_survive_unexpanded_and_the_input_is_not_changed() -> None:
    document = doc(server={"addr": "${ADDR}"}, jwt={"secret": "${JWT_SECRET:-x}"})
    original = copy.deepcopy(document)
    text = migrate(document).yaml()
    assert document == original
    migrated = yaml.safe_load(text)
    assert migrated["server"] == {"address": "${ADDR}"}
    assert migrated["jwt"] == {"secret": "${JWT_SECRET:-x}"}


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        migrate(["buckets"])


FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_every_fixture_changes_and_migrating_twice_changes_nothing(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    once = migrate(document)
    assert [n for n in once.notes if n.changes] or path.name == "authorization.yaml"
    again = migrate(yaml.safe_load(once.yaml()))
    assert again.document == once.document
    assert not [str(n) for n in again.notes if n.changes]


def test_the_fixtures_cover_every_rust_key_of_the_issue() -> None:
    paths = {n.path for p in FIXTURE_FILES for n in migrate(yaml.safe_load(p.read_text())).notes}
    expected = {
        "cache.layers", "cache.memory.max_entry_size_mb", "cache.memory.max_memory_cache_mb",
        "cache.memory.max_entry_size_bytes", "cache.memory.max_memory_cache_size_mb",
        "cache.redis.connection_timeout_ms", "cache.redis.operation_timeout_ms",
        "cache.redis.min_pool_size", "cache.redis.max_pool_size", "cache.redis.enabled",
        "jwt.token_sources[0].source_type", "jwt.token_sources[1].type",
        "jwt.token_sources[1].param_name", "server.addr", "server.threads",
        "buckets[0].cache.default_ttl_seconds", "logging.format", "jwt.claims_verification",
        "jwt.claims_verification[0].value", "buckets[0].path_prefix",
        "buckets[0].authorization", "buckets[1].authorization",
    }  # fmt: skip
    assert expected <= paths


def test_server_threads_is_read_as_workers_with_a_deprecation() -> None:
    document = doc(server={"threads": 1})
    renamed, warnings = accept_synonyms(document)
    assert renamed["server"] == {"workers": 1}
    assert document["server"] == {"threads": 1}
    config = parse_config(document, {})
    assert config.server.workers == 1
    assert config.deprecations == warnings
    assert warnings[0].startswith("server.threads: a Rust Yatagarasu key, read as server.workers")
    assert parse_config(doc(server={"workers": 1}), {}).deprecations == ()
    with pytest.raises(ConfigError, match=r"spelling of server\.workers, given beside it") as both:
        parse_config(doc(server={"threads": 1, "workers": 1}), {})
    assert both.value.path == "server.threads" and "unknown key" not in str(both.value)
    with pytest.raises(ConfigError, match="deprecations: unknown key"):
        parse_config(doc(deprecations=["x"]), {})


def test_the_loader_itself_names_the_migrate_command(tmp_path: Path) -> None:
    file = tmp_path / "rust.yaml"
    file.write_text(yaml.safe_dump(doc(server={"addr": "127.0.0.1:1"})))
    with pytest.raises(ConfigError, match=f"; run: yatagarasu-config migrate {file}$"):
        load_config(str(file), {})


@pytest.mark.parametrize(
    ("sections", "path", "hint"),
    [
        ({"cache": {"layers": ["memory"]}}, "cache.layers", "a Rust Yatagarasu key"),
        ({"server": {"addr": "127.0.0.1:1"}}, "server.addr", "a Rust Yatagarasu key"),
        ({"logging": {"format": "pretty"}}, "logging.format", "a Rust Yatagarasu key"),
        (
            {"server": {"threads": 100}},
            "server.workers",
            "written server.threads, a Rust Yatagarasu key",
        ),
        (
            {"jwt": {"secret": "s", "claims_verification": [
                {"claim": "r", "operator": "in", "value": "a,b"}]}},
            "jwt.claims_verification[0].value",
            "a Rust Yatagarasu key",
        ),
    ],
)  # fmt: skip
def test_load_errors_caused_by_rust_keys_name_the_migrate_command(
    tmp_path: Path, sections: dict[str, Any], path: str, hint: str
) -> None:
    file = tmp_path / "rust.yaml"
    file.write_text(yaml.safe_dump(doc(**sections)))
    with pytest.raises(ConfigError) as caught:
        first_generation(str(file), MemoryReactorClock())
    assert caught.value.path == path
    assert caught.value.message.endswith(f"; {hint}; run: yatagarasu-config migrate {file}")


def test_errors_of_other_keys_get_no_hint() -> None:
    document = doc(cache={"layers": ["memory"]}, bogus=1)
    error = ConfigError("bogus", "unknown key")
    assert explain(error, document, "f.yaml") is error
    hinted = explain(ConfigError("cache.layers", "unknown key"), document, "f.yaml")
    assert explain(hinted, document, "f.yaml") is hinted


def run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_writes_stdout_and_reports_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli("migrate", str(FIXTURES / "memory_bytes.yaml"), capsys=capsys)
    assert status == 0
    assert yaml.safe_load(out)["cache"]["memory"] == {
        "enabled": True, "max_cache_size_mb": 32, "max_item_size_mb": 2
    }  # fmt: skip
    assert "cache.memory.max_entry_size_bytes: renamed to cache.memory.max_item_size_mb" in err
    assert "2 key(s) changed" in err


def test_cli_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "out.yaml"
    source = str(FIXTURES / "server_logging.yaml")
    status, out, err = run_cli("migrate", source, "-o", str(out_file), capsys=capsys)
    assert (status, err) == (0, "")
    assert "server.addr: renamed to server.address" in out
    assert yaml.safe_load(out_file.read_text())["server"] == {
        "address": "${PROXY_ADDR}", "workers": 1
    }  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("buckets: [\n", "is not valid YAML at line"),
        ("- a\n", "must be a YAML mapping"),
    ],
)
def test_cli_fails_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "in.yaml"
    if content is not None:
        path.write_text(content)
    status, out, err = run_cli("migrate", str(path), capsys=capsys)
    assert (status, out) == (1, "")
    assert err.startswith(f"yatagarasu-config: cannot migrate {path}: ")
    assert message in err


def test_cli_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = str(tmp_path / "missing-dir" / "out.yaml")
    status, _, err = run_cli(
        "migrate", str(FIXTURES / "admin_bucket.yaml"), "-o", target, capsys=capsys
    )
    assert status == 1
    assert f"cannot write {target}" in err


def test_note_text() -> None:
    assert str(Note("a.b", "kept", "", "why")) == "a.b: kept; why"
    assert str(Note("a.b", "renamed", "to a.c", "why", "a.c")) == "a.b: renamed to a.c; why"

"""Configuration loading: schema, aliases, ${ENV}, dotted-path errors, example files."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.testing import MemoryReactorClock

from yatagarasu.assembly import assemble
from yatagarasu.config import ConfigError, load_config, parse_config
from yatagarasu.config.files import read_document

ROOT = Path(__file__).resolve().parents[3]


def minimal(**bucket: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "pub", "path_prefix": "/pub", "s3": {"bucket": "b"}}
    entry.update(bucket)
    return {"buckets": [entry]}


def error_of(document: Any, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(document, environ or {})
    return info.value


def test_minimal_defaults() -> None:
    config = parse_config(minimal(), {})
    assert config.server.host == "127.0.0.1"
    assert config.server.listen_port == 8080
    bucket = config.buckets[0]
    assert bucket.prefix_segments == ("pub",)
    assert bucket.s3.retry.max_attempts == 3
    assert bucket.s3.first_byte_seconds == bucket.s3.timeout
    assert bucket.s3.connect_seconds == 10.0
    assert bucket.auth.enabled is False


def test_rust_style_address_with_port() -> None:
    config = parse_config({**minimal(), "server": {"address": "0.0.0.0:9090"}}, {})
    assert (config.server.host, config.server.listen_port) == ("0.0.0.0", 9090)


def test_ipv6_address_forms() -> None:
    bare = parse_config({**minimal(), "server": {"address": "::1", "port": 8081}}, {})
    assert (bare.server.host, bare.server.listen_port) == ("::1", 8081)
    bracketed = parse_config({**minimal(), "server": {"address": "[::]:8082"}}, {})
    assert (bracketed.server.host, bracketed.server.listen_port) == ("::", 8082)


def test_conflicting_ports_rejected() -> None:
    error = error_of({**minimal(), "server": {"address": "0.0.0.0:9090", "port": 8080}})
    assert error.path == "server.port"


def test_metrics_defaults_serve_on_the_main_listener() -> None:
    config = parse_config(minimal(), {})
    assert (config.metrics.enabled, config.metrics.address, config.metrics.port) == (
        True,
        None,
        None,
    )
    assert config.metrics.on_main_listener
    assert config.metrics.listener(config.server) is None


def test_rust_metrics_section_loads_as_a_listener_of_its_own() -> None:
    document = {**minimal(), "server": {"address": "0.0.0.0", "port": 8080}}
    config = parse_config({**document, "metrics": {"enabled": True, "port": 9090}}, {})
    # The metrics listener listens where the main one does unless metrics.address says else.
    assert config.metrics.listener(config.server) == ("0.0.0.0", 9090)
    assert not config.metrics.on_main_listener
    private = parse_config({**document, "metrics": {"address": "127.0.0.1", "port": 9090}}, {})
    assert private.metrics.listener(private.server) == ("127.0.0.1", 9090)


def test_metrics_address_forms() -> None:
    bare = parse_config({**minimal(), "metrics": {"address": "::1", "port": 9091}}, {})
    assert bare.metrics.listener(bare.server) == ("::1", 9091)
    bracketed = parse_config({**minimal(), "metrics": {"address": "[::]:9092"}}, {})
    assert bracketed.metrics.listener(bracketed.server) == ("::", 9092)
    with_port = parse_config({**minimal(), "metrics": {"address": "127.0.0.2:9093"}}, {})
    assert with_port.metrics.listener(with_port.server) == ("127.0.0.2", 9093)


def test_metrics_disabled_serves_nowhere() -> None:
    config = parse_config({**minimal(), "metrics": {"enabled": False, "port": 9090}}, {})
    assert config.metrics.listener(config.server) is None
    assert not config.metrics.on_main_listener


@pytest.mark.parametrize(
    ("section", "server", "path", "needle"),
    [
        ({"port": 8080}, {}, "metrics.port", "is the main listener's port"),
        ({"port": 9000}, {"address": "0.0.0.0:9000"}, "metrics.port", "main listener's port"),
        ({"address": "[::1]:8081"}, {"port": 8081}, "metrics.address", "main listener's port"),
        ({"enabled": False, "port": 8080}, {}, "metrics.port", "main listener's port"),
        ({"address": "127.0.0.1"}, {}, "metrics.address", "needs metrics.port"),
        ({"address": "metrics.local", "port": 9090}, {}, "metrics.address", "IP address"),
        ({"address": "127.0.0.1:9090", "port": 9091}, {}, "metrics.port", "conflicts"),
        ({"port": 0}, {}, "metrics.port", "1..65535"),
        ({"port": 70000}, {}, "metrics.port", "1..65535"),
        ({"port": "9090"}, {}, "metrics.port", "expected an integer"),
        ({"enabled": "yes"}, {}, "metrics.enabled", "expected true or false"),
        ({"prot": 9090}, {}, "metrics.prot", "did you mean 'port'"),
        ({"serve_admin": True}, {}, "metrics.serve_admin", "needs metrics.port"),
        ({"serve_admin": True, "port": 9090, "enabled": False}, {}, "metrics.serve_admin", "needs"),
        ({"serve_admin": "yes", "port": 9090}, {}, "metrics.serve_admin", "true or false"),
    ],
)
def test_metrics_errors_name_the_key(
    section: dict[str, Any], server: dict[str, Any], path: str, needle: str
) -> None:
    error = error_of({**minimal(), "server": server, "metrics": section})
    assert error.path == path
    assert needle in error.message


def test_unknown_key_has_dotted_path_and_hint() -> None:
    document = minimal(s3={"bucket": "b", "timout": 5})
    error = error_of(document)
    assert error.path == "buckets[0].s3.timout"
    assert "did you mean 'timeout'" in error.message


def test_unknown_key_in_second_bucket() -> None:
    document = minimal()
    document["buckets"].append(
        {"name": "two", "path_prefix": "/two", "s3": {"bucket": "b"}, "cors": {"max_ag": 1}}
    )
    error = error_of(document)
    assert str(error) == "buckets[1].cors.max_ag: unknown key (did you mean 'max_age'?)"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (
            {"observability": {"request_logging": {"log_request_body": True}}, **minimal()},
            "observability.request_logging.log_request_body",
        ),
    ],
)
def test_features_not_built_yet_are_rejected(document: dict[str, Any], path: str) -> None:
    error = error_of(document)
    assert error.path == path
    assert "not supported yet" in error.message


def test_env_expansion_with_default_and_missing() -> None:
    document = minimal(s3={"bucket": "${BUCKET}", "region": "${REGION:-eu-west-1}"})
    config = parse_config(document, {"BUCKET": "from-env"})
    assert config.buckets[0].s3.bucket == "from-env"
    assert config.buckets[0].s3.region == "eu-west-1"
    error = error_of(document, {})
    assert error.path == "buckets[0].s3.bucket"
    assert "BUCKET" in error.message


def test_env_references_give_numbers_and_booleans_where_the_schema_wants_them() -> None:
    document = {
        **minimal(s3={"bucket": "${BUCKET}", "timeout": "${S3_TIMEOUT:-2.5}"}),
        "server": {"port": "${PORT}", "workers": "${WORKERS:-2}"},
        "metrics": {"enabled": "${METRICS_ON:-FALSE}"},
        "logging": {"level": "${LOG_LEVEL:-warn}"},
    }
    config = parse_config(document, {"PORT": "18099", "BUCKET": "1234"})
    assert config.server.listen_port == 18099 and config.server.workers == 2
    assert config.buckets[0].s3.timeout == 2.5
    assert config.buckets[0].s3.bucket == "1234" and type(config.buckets[0].s3.bucket) is str
    assert config.metrics.enabled is False
    assert config.logging.level == "warn" and type(config.logging.level) is str
    error = error_of(document, {"PORT": "80 80", "BUCKET": "b"})
    assert error.path == "server.port"
    assert error.message == "expected an integer, got str '80 80' (from the environment)"
    error = error_of({**minimal(), "metrics": {"enabled": "${ON}"}}, {"ON": "yes"})
    assert error.path == "metrics.enabled" and "'yes' (from the environment)" in error.message
    written = error_of({**minimal(), "server": {"port": "8080"}})  # a string in the YAML itself
    assert written.message == "expected an integer, got str '8080'"
    for odd in ("1_000", "1e3", "٣", "true"):  # an integer is ASCII digits, nothing else
        error = error_of({**minimal(), "server": {"port": "${P}"}}, {"P": odd})
        assert error.message == f"expected an integer, got str {odd!r} (from the environment)"
    listed = parse_config(minimal(not_found_status="${NOT_FOUND:-200}"), {})
    assert listed.buckets[0].not_found_status == 200  # a Literal of numbers
    error = error_of(minimal(not_found_status="${NOT_FOUND}"), {"NOT_FOUND": "true"})
    assert error.path == "buckets[0].not_found_status"  # True == 1 but is not one of them


def test_types_are_checked() -> None:
    error = error_of(minimal(s3={"bucket": "b", "timeout": "soon"}))
    assert error.path == "buckets[0].s3.timeout"
    assert "expected a number" in error.message
    error = error_of({**minimal(), "server": {"port": True}})
    assert error.path == "server.port"


def test_required_keys() -> None:
    error = error_of({"buckets": [{"name": "x", "s3": {"bucket": "b"}}]})
    assert error.path == "buckets[0].path_prefix"
    assert error.message == "is required"
    assert error_of({"buckets": []}).path == "buckets"


def test_prefix_rules() -> None:
    assert error_of(minimal(path_prefix="pub")).path == "buckets[0].path_prefix"
    assert "reserved" in error_of(minimal(path_prefix="/health")).message
    assert "reserved" in error_of(minimal(path_prefix="/admin/x")).message
    assert error_of(minimal(path_prefix="/a/../b")).path == "buckets[0].path_prefix"
    document = minimal()
    document["buckets"].append({"name": "two", "path_prefix": "/pub/", "s3": {"bucket": "c"}})
    error = error_of(document)
    assert error.path == "buckets[1].path_prefix"
    assert "already used" in error.message


def test_duplicate_bucket_names() -> None:
    document = minimal()
    document["buckets"].append({"name": "pub", "path_prefix": "/other", "s3": {"bucket": "c"}})
    assert error_of(document).path == "buckets[1].name"


def test_credentials_go_together() -> None:
    assert (
        error_of(minimal(s3={"bucket": "b", "access_key": "A"})).path == "buckets[0].s3.secret_key"
    )


def test_endpoint_must_be_http_url() -> None:
    error = error_of(minimal(s3={"bucket": "b", "endpoint": "ftp://x"}))
    assert error.path == "buckets[0].s3.endpoint"
    error = error_of(minimal(s3={"bucket": "b", "endpoint": "http://x/path"}))
    assert "path" in error.message


def test_retry_counts_all_attempts() -> None:
    assert error_of(minimal(s3={"bucket": "b", "retry": {"max_attempts": 0}})).path == (
        "buckets[0].s3.retry.max_attempts"
    )
    error = error_of(
        minimal(s3={"bucket": "b", "retry": {"initial_backoff_ms": 500, "max_backoff_ms": 100}})
    )
    assert error.path == "buckets[0].s3.retry.max_backoff_ms"


def test_cors_origin_format() -> None:
    error = error_of(minimal(cors={"allowed_origins": ["example.com"]}))
    assert error.path == "buckets[0].cors.allowed_origins[0]"


def test_logging_choices() -> None:
    error = error_of({**minimal(), "logging": {"format": "xml"}})
    assert error.path == "logging.format"


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    doubled = tmp_path / "doubled.yaml"
    doubled.write_text(
        "buckets: [{name: a, path_prefix: /a, s3: {bucket: a, region: us-east-1}}]\n"
        "observability:\n  slow_query: {enabled: true}\n"
        "server: {port: 8081}\n"
        "observability:\n  request_logging: {status_codes: [99]}\n"
    )
    with pytest.raises(ConfigError, match=r"key 'observability' given twice \(lines 2 and 5\)"):
        load_config(str(doubled), {})
    nested = tmp_path / "nested.yaml"
    nested.write_text("server:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError, match=r"key 'port' given twice \(lines 2 and 3\)"):
        load_config(str(nested), {})
    flow = tmp_path / "flow.yaml"
    flow.write_text("server: {port: 1, port: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'port' given twice \(line 1\)"):
        load_config(str(flow), {})


def test_keys_a_merge_brings_in_may_be_overridden(tmp_path: Path) -> None:
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "x-s3: &s3 {bucket: a, region: eu-west-1}\n"
        "buckets:\n"
        "  - name: a\n    path_prefix: /a\n    s3: {<<: *s3, region: us-east-1}\n"
    )
    document = read_document(str(merged))
    assert document["buckets"][0]["s3"] == {"bucket": "a", "region": "us-east-1"}
    chained = tmp_path / "chained.yaml"  # a merged mapping that is itself merged, deeper down
    chained.write_text(
        "defs:\n  inner:\n    c: &c {bucket: a, region: eu-west-1}\n"
        "    s3: &b {<<: *c, region: us-east-1}\n"
        "m: {<<: *b, bucket: z}\n"
        "n: {<<: [*b, *c], x: 1}\n"
    )
    assert read_document(str(chained)) == yaml.safe_load(chained.read_text())


def test_load_config_reports_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("buckets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(str(bad), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), {})


def example_files() -> list[str]:
    patterns = ["etc/**/*.yaml", "etc/**/*.yml", "docs/**/*.yaml", "docs/**/*.yml"]
    return sorted(f for p in patterns for f in glob.glob(str(ROOT / p), recursive=True))


def test_there_are_example_files() -> None:
    assert any(f.endswith("yatagarasu.example.yaml") for f in example_files())


@pytest.mark.parametrize("path", example_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_yaml_loads(path: str, tmp_path: Path) -> None:
    document = read_document(path)  # no key given twice either
    environ = {
        name: f"value-of-{name}-with-enough-bytes-for-any-hmac-key-0123456789abcdef"
        for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "JWT_SECRET", "SIGNED_URL_KEY")
    }
    environ["CACHE_DIR"] = str(tmp_path / "cache")  # the example's; any user may create it
    config = parse_config(document, environ)
    assert config.buckets
    assemble(
        config, MemoryReactorClock()
    )  # auth, cache and TLS settings are valid too (fail closed)


RUST_REPLICAS = """
buckets:
  - name: products
    path_prefix: /products
    s3:
      replicas:
        - name: primary
          bucket: products-us-west-2
          region: us-west-2
          access_key: key1
          secret_key: secret1
          priority: 1
        - name: replica-eu
          bucket: products-eu-west-1
          region: eu-west-1
          endpoint: http://127.0.0.1:9000
          access_key: key2
          secret_key: secret2
          priority: 2
          timeout: 5
      circuit_breaker:
        failure_threshold: 3
        timeout_seconds: 30
"""


def test_rust_replicas_and_circuit_breaker_load_unchanged() -> None:
    s3 = parse_config(yaml.safe_load(RUST_REPLICAS), {}).buckets[0].s3
    assert (s3.circuit_breaker.failure_threshold, s3.circuit_breaker.timeout_seconds) == (3, 30)
    assert (s3.circuit_breaker.success_threshold, s3.circuit_breaker.half_open_max_requests) == (
        2,
        3,
    )  # the Rust defaults
    primary, eu = s3.upstreams()
    assert (primary.name, primary.s3.bucket, primary.s3.region) == (
        "primary",
        "products-us-west-2",
        "us-west-2",
    )
    assert (primary.s3.access_key, primary.s3.endpoint, primary.s3.timeout) == ("key1", None, 20)
    assert (eu.name, eu.s3.endpoint, eu.s3.secret_key, eu.s3.timeout) == (
        "replica-eu",
        "http://127.0.0.1:9000",
        "secret2",
        5,
    )
    assert eu.s3.retry == s3.retry and not eu.s3.replicas


def test_replicas_are_ordered_by_priority_and_share_the_region_default() -> None:
    s3 = (
        parse_config(
            minimal(
                s3={
                    "region": "ap-northeast-1",
                    "replicas": [
                        {"name": "b", "bucket": "b", "priority": 5},
                        {"name": "a", "bucket": "a", "priority": 0, "region": "eu-west-1"},
                    ],
                }
            ),
            {},
        )
        .buckets[0]
        .s3
    )
    assert [(u.name, u.s3.region) for u in s3.upstreams()] == [
        ("a", "eu-west-1"),
        ("b", "ap-northeast-1"),
    ]


def test_a_bucket_without_replicas_is_its_own_primary() -> None:
    s3 = parse_config(minimal(), {}).buckets[0].s3
    (only,) = s3.upstreams()
    assert (only.name, only.s3) == ("primary", s3)


@pytest.mark.parametrize(
    ("s3", "path", "message"),
    [
        (
            {"bucket": "x", "replicas": [{"name": "a", "bucket": "y", "priority": 1}]},
            "buckets[0].s3.bucket",
            "cannot be combined with replicas",
        ),
        (
            {"replicas": [{"name": "a", "bucket": "y", "priority": 1, "secret_key": "s"}]},
            "buckets[0].s3.replicas[0].access_key",
            "go together",
        ),
        (
            {
                "replicas": [
                    {"name": "a", "bucket": "y", "priority": 1},
                    {"name": "a", "bucket": "z", "priority": 2},
                ]
            },
            "buckets[0].s3.replicas[1].name",
            "already used",
        ),
        (
            {"replicas": [{"name": "a", "bucket": "y", "priority": 1, "endpoint": "ftp://h"}]},
            "buckets[0].s3.replicas[0].endpoint",
            "expected http(s)",
        ),
        (
            {"replicas": [{"name": "a b", "bucket": "y", "priority": 1}]},
            "buckets[0].s3.replicas[0].name",
            "letters, digits",
        ),
        (
            {"replicas": [{"name": "a", "bucket": "y"}]},
            "buckets[0].s3.replicas[0].priority",
            "is required",
        ),
        (
            {"replicas": [{"name": "a", "bucket": "y", "priority": 1, "timeout": 0}]},
            "buckets[0].s3.replicas[0].timeout",
            "must be > 0",
        ),
        ({}, "buckets[0].s3.bucket", "must not be empty"),
        (
            {"bucket": "b", "circuit_breaker": {"failure_threshold": 0}},
            "buckets[0].s3.circuit_breaker.failure_threshold",
            "must be >= 1",
        ),
        (
            {"bucket": "b", "circuit_breaker": {"timeout_seconds": -1}},
            "buckets[0].s3.circuit_breaker.timeout_seconds",
            "must be > 0",
        ),
        (
            {"bucket": "b", "circuit_breaker": {"half_open_max_request": 1}},
            "buckets[0].s3.circuit_breaker.half_open_max_request",
            "did you mean 'half_open_max_requests'",
        ),
    ],
)
def test_bad_replicas_and_breakers_name_the_key(
    s3: dict[str, Any], path: str, message: str
) -> None:
    error = error_of(minimal(s3=s3))
    assert error.path == path


def test_observability_defaults_are_off() -> None:
    observability = parse_config(minimal(), {}).observability
    assert observability.tracing.enabled is False
    assert observability.slow_query.enabled is False
    assert observability.tracing.traces_url == "http://127.0.0.1:4318/v1/traces"


def test_tracing_keys_of_the_rust_version() -> None:
    document = {
        **minimal(),
        "observability": {
            "tracing": {
                "enabled": True,
                "exporter": "console",
                "otlp_endpoint": "http://collector:4318/",
                "service_name": "edge-proxy",
                "sampling_ratio": 0.25,
                "propagate_context": False,
            },
            "slow_query": {"enabled": True, "threshold_ms": 250, "include_breakdown": False},
        },
    }
    observability = parse_config(document, {}).observability
    tracing = observability.tracing
    assert (tracing.exporter, tracing.service_name, tracing.sampling_ratio) == (
        "console",
        "edge-proxy",
        0.25,
    )
    assert tracing.propagate_context is False
    assert tracing.traces_url == "http://collector:4318/v1/traces"
    assert observability.slow_query.threshold_ms == 250.0
    assert observability.slow_query.include_breakdown is False
    full = {"enabled": True, "otlp_endpoint": "https://c.example/otel/v1/traces"}
    document["observability"] = {"tracing": full}
    traced = parse_config(document, {}).observability.tracing
    assert traced.traces_url == "https://c.example/otel/v1/traces"


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ({"tracing": {"sampling_ratio": 1.5}}, "tracing.sampling_ratio", "between 0 and 1"),
        ({"tracing": {"exporter": "jaeger"}}, "tracing.exporter", "must be one of"),
        ({"tracing": {"otlp_endpoint": "collector:4318"}}, "tracing.otlp_endpoint", "http(s)"),
        ({"tracing": {"service_name": ""}}, "tracing.service_name", "must not be empty"),
        ({"tracing": {"enabeld": True}}, "tracing.enabeld", "did you mean 'enabled'"),
        ({"slow_query": {"threshold_ms": -1}}, "slow_query.threshold_ms", ">= 0"),
        ({"slow_query": {"threshold": 1}}, "slow_query.threshold", "did you mean 'threshold_ms'"),
    ],
)
def test_bad_observability_values_name_the_dotted_path(
    section: dict[str, Any], path: str, message: str
) -> None:
    error = error_of({**minimal(), "observability": section})
    assert error.path == f"observability.{path}"
    assert message in error.message


def test_listing_and_documents_defaults() -> None:
    bucket = parse_config(minimal(), {}).buckets[0]
    assert not bucket.listing.enabled
    assert (bucket.listing.format, bucket.listing.max_keys) == ("html", 1000)
    assert bucket.listing.cache_ttl_seconds == 10.0
    assert (bucket.index_document, bucket.not_found_document) == (None, None)
    assert bucket.not_found_status == 404
    spa = parse_config(
        minimal(
            listing={"enabled": True, "format": "json", "max_keys": 50, "cache_ttl_seconds": 0},
            index_document="index.html",
            not_found_document="app/index.html",
            not_found_status=200,
        ),
        {},
    ).buckets[0]
    assert (spa.listing.format, spa.listing.max_keys, spa.listing.cache_ttl_seconds) == (
        "json",
        50,
        0.0,
    )
    assert (spa.index_document, spa.not_found_document, spa.not_found_status) == (
        "index.html",
        "app/index.html",
        200,
    )


@pytest.mark.parametrize(
    ("bucket", "path", "message"),
    [
        ({"listing": {"format": "xml"}}, "buckets[0].listing.format", "must be one of"),
        ({"listing": {"max_keys": 1001}}, "buckets[0].listing.max_keys", "must be 1-1000"),
        ({"listing": {"max_keys": 0}}, "buckets[0].listing.max_keys", "must be 1-1000"),
        ({"listing": {"cache_ttl_seconds": -1}}, "buckets[0].listing.cache_ttl_seconds", ">= 0"),
        ({"listing": {"enabld": True}}, "buckets[0].listing.enabld", "did you mean 'enabled'"),
        ({"index_document": "/index.html"}, "buckets[0].index_document", "relative"),
        ({"index_document": "a/../b.html"}, "buckets[0].index_document", "'..'"),
        ({"not_found_document": "dir/"}, "buckets[0].not_found_document", "trailing"),
        ({"not_found_status": 302}, "buckets[0].not_found_status", "must be one of 200, 404"),
    ],
)
def test_listing_and_documents_errors_name_the_key(
    bucket: dict[str, Any], path: str, message: str
) -> None:
    error = error_of(minimal(**bucket))
    assert error.path == path
    assert message in error.message


def test_listen_backlog_defaults_to_4096_and_is_bounded() -> None:
    assert parse_config(minimal(), {}).server.listen_backlog == 4096
    assert (
        parse_config({**minimal(), "server": {"listen_backlog": 128}}, {}).server.listen_backlog
        == 128
    )
    for bad in (0, 65536):
        error = error_of({**minimal(), "server": {"listen_backlog": bad}})
        assert error.path == "server.listen_backlog"
        assert f"must be 1..65535, got {bad}" in str(error)


def test_worker_cpu_affinity_is_off_by_default_and_needs_several_workers() -> None:
    assert parse_config(minimal(), {}).server.worker_cpu_affinity is False
    bound = {"workers": 2, "worker_cpu_affinity": True}
    assert parse_config({**minimal(), "server": bound}, {}).server.worker_cpu_affinity is True
    error = error_of({**minimal(), "server": {"worker_cpu_affinity": True}})
    assert error.path == "server.worker_cpu_affinity"
    assert "needs server.workers > 1" in error.message
    error = error_of({**minimal(), "server": {"workers": 2, "worker_cpu_affinity": "auto"}})
    assert error.path == "server.worker_cpu_affinity"


def test_worker_cpu_affinity_is_refused_where_the_platform_cannot_bind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "sched_setaffinity", raising=False)
    error = error_of({**minimal(), "server": {"workers": 2, "worker_cpu_affinity": True}})
    assert error.path == "server.worker_cpu_affinity"
    assert "needs Linux" in error.message
    assert parse_config({**minimal(), "server": {"workers": 2}}, {}).server.workers == 2


def test_socket_send_buffer_defaults_to_one_mebibyte_and_zero_means_the_kernels() -> None:
    assert parse_config(minimal(), {}).server.socket_send_buffer_bytes == 1048576
    autotuned = parse_config({**minimal(), "server": {"socket_send_buffer_bytes": 0}}, {})
    assert autotuned.server.socket_send_buffer_bytes == 0
    for value in (100, -1):
        error = error_of({**minimal(), "server": {"socket_send_buffer_bytes": value}})
        assert "server.socket_send_buffer_bytes" in str(error)
        assert "0 (kernel autotuning) or >= 4096" in str(error)

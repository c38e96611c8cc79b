"""
The ``twistd yatagarasu`` command (yatagarasu.tap): option errors, the ``--check`` summary and
``makeService``, without a real reactor (the configurations that fail stop before it is used;
the summary and the service are built on a ``MemoryReactorClock``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.application.internet import TimerService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from tests.unit.fakes import bucket_entry
from yatagarasu.assembly import Assembly, assemble
from yatagarasu.collector import YoungThreshold
from yatagarasu.config import parse_config
from yatagarasu.observability.reactor_lag import ReactorLagProbe
from yatagarasu.service import ProxyService
from yatagarasu.tap import Options, makeService, summary, twistd_logs_to_stdout

SECRET = "s" * 64


def assembled(document: dict[str, Any]) -> Assembly:
    return assemble(parse_config(document, {}), MemoryReactorClock())


def test_config_is_required() -> None:
    with pytest.raises(usage.UsageError, match="--config PATH is required"):
        Options().parseOptions([])


def test_an_invalid_config_exits_1_naming_the_file_and_the_dotted_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"buckets": [bucket_entry(bogus=1)]}))
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(path), "--check"])
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"yatagarasu: invalid configuration {path}: ")
    assert "buckets[0].bogus" in captured.err


def test_a_missing_config_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(path)])
    assert info.value.code == 1
    assert str(path) in capsys.readouterr().err


def test_unknown_options_are_usage_errors() -> None:
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--config", "x.yaml", "--bogus"])


def test_summary_of_a_public_bucket_on_the_main_listener() -> None:
    text = summary("y.yaml", assembled({"buckets": [bucket_entry()], "server": {"port": 8081}}))
    assert text.splitlines() == [
        "configuration OK: y.yaml",
        "listener: http://127.0.0.1:8081",  # the default address
        "metrics: /metrics on the main listener",
        "buckets: 1",
        "  /pub -> s3://pub-bucket (http://127.0.0.1:9000, credentials static) [pub; public]",
        "admin API: /admin/... (disabled, answers 403)",
    ]


def test_summary_writes_ipv6_addresses_in_brackets() -> None:
    document = {
        "buckets": [bucket_entry()],
        "server": {"address": "::1", "port": 8081},
        "metrics": {"port": 9091},
    }
    lines = summary("v6.yaml", assembled(document)).splitlines()
    assert lines[1] == "listener: http://[::1]:8081"
    assert lines[2] == "metrics: http://[::1]:9091/metrics (its own listener; 404 on the main port)"


def test_summary_lists_replicas_by_priority() -> None:
    entry = bucket_entry()
    entry["s3"] = {
        "region": "eu-west-1",
        "replicas": [
            {
                "name": "b",
                "priority": 2,
                "bucket": "two",
                "endpoint": "http://127.0.0.1:9002",
                "credentials": {"source": "anonymous"},
            },
            {"name": "a", "priority": 1, "bucket": "one", "access_key": "A", "secret_key": "s"},
        ],
    }
    text = summary("y.yaml", assembled({"buckets": [entry], "server": {"port": 8081}}))
    assert (
        "  /pub -> a: s3://one (AWS eu-west-1, credentials static), b: s3://two"
        " (http://127.0.0.1:9002, credentials anonymous)"
    ) in text


def test_summary_names_auth_ip_filter_cache_layers_metrics_port_and_admin() -> None:
    document = {
        "server": {"address": "127.0.0.1", "port": 8082},
        "metrics": {"port": 9091},
        "jwt": {
            "secret": SECRET,
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}},
        "buckets": [
            bucket_entry("pub", "/pub"),
            bucket_entry(
                "priv",
                "/priv",
                auth={"enabled": True},
                ip_filter={"allowlist": ["10.0.0.0/8"]},
            ),
        ],
    }
    lines = summary("z.yaml", assembled(document)).splitlines()
    assert lines[1] == "listener: http://127.0.0.1:8082"
    assert lines[2] == (
        "metrics: http://127.0.0.1:9091/metrics (its own listener; 404 on the main port)"
    )
    assert lines[3] == "buckets: 2"
    assert lines[4].endswith("[pub; public, cached]")
    assert lines[5].endswith("[priv; auth: jwt, ip filter, cached]")
    assert lines[6] == "cache layers: memory"
    assert lines[7] == "admin API: /admin/... (jwt with admin_claims)"


def test_summary_names_the_rate_limits() -> None:
    document = {
        "server": {
            "rate_limit": {
                "algorithm": "sliding_window",
                "global": {"requests_per_second": 100},
                "per_ip": {"requests_per_second": 0.5, "burst": 4},
            }
        },
        "buckets": [bucket_entry(rate_limit={"requests_per_second": 20, "burst": 30})],
    }
    lines = summary("r.yaml", assembled(document)).splitlines()
    assert lines[4].endswith("[pub; public, rate limit 20/s burst 30]")
    assert lines[5] == (
        "rate limits: sliding_window, local (global 100/s burst 100, per_ip 0.5/s burst 4)"
    )
    off = {"server": {"rate_limit": {"enabled": False, "global": {"requests_per_second": 1}}}}
    quiet = summary("q.yaml", assembled({**off, "buckets": [bucket_entry()]}))
    assert "rate limit" not in quiet


def test_make_service_builds_the_proxy_service_from_the_parsed_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    tuned: list[tuple[object, object]] = []
    trims = TimerService(5, lambda: None)

    def keep_freed_memory(environ: object, clock: object) -> TimerService:
        tuned.append((environ, clock))
        return trims

    monkeypatch.setattr("yatagarasu.tap.keep_freed_memory", keep_freed_memory)
    reactor = MemoryReactorClock()
    assembly = assemble(parse_config({"buckets": [bucket_entry()]}, {}), reactor)
    options = Options()
    options["reactor"], options["assembly"] = reactor, assembly
    service = makeService(options)
    assert tuned == [(os.environ, reactor)]  # malloc keeps freed memory (yatagarasu.heap)
    assert isinstance(service, ProxyService)
    assert trims.parent is service  # the trims run with the proxy
    probes = [child for child in service if isinstance(child, ReactorLagProbe)]
    assert len(probes) == 1  # metrics are on by default: the reactor's lag is measured
    thresholds = [child for child in service if isinstance(child, YoungThreshold)]
    assert len(thresholds) == 1  # the collector waits for 10,000 young objects, not 700
    assert service.assembly is assembly
    assert [(listener.name, listener.port) for listener in service.listeners] == [
        ("proxy", assembly.config.server.listen_port)
    ]
    assert not service.running and reactor.tcpServers == []  # twistd starts it, not makeService


def test_a_worker_trims_its_own_heap_and_the_trims_are_optional(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from yatagarasu.workers.child import WorkerChannel

    reactor = MemoryReactorClock()
    answers: list[TimerService | None] = [TimerService(5, lambda: None), None]
    monkeypatch.setattr("yatagarasu.tap.keep_freed_memory", lambda *args: answers[0])
    config = parse_config({"buckets": [bucket_entry()], "server": {"workers": 2}}, {})
    options = Options()
    options["reactor"] = reactor
    options["assembly"] = assemble(config, reactor, siblings=WorkerChannel(reactor, 0, 2))
    options["worker-fds"] = [3, 4, 5]  # the proxy's listener, then the control pipes
    worker = makeService(options)
    assert isinstance(worker, ProxyService) and worker.worker is not None
    assert answers[0] is not None and answers[0].parent is worker  # each worker trims
    assert any(isinstance(child, YoungThreshold) for child in worker)  # and sets its collector
    answers.pop(0)  # the operator tuned malloc: no trims, the same service otherwise
    service = makeService(options)
    assert isinstance(service, ProxyService)
    assert not any(isinstance(child, TimerService) for child in service)


def test_no_reactor_lag_probe_without_metrics() -> None:
    reactor = MemoryReactorClock()
    config = {"buckets": [bucket_entry()], "metrics": {"enabled": False}}
    options = Options()
    options["reactor"] = reactor
    options["assembly"] = assemble(parse_config(config, {}), reactor)
    service = makeService(options)
    assert not any(isinstance(child, ReactorLagProbe) for child in service)


def test_the_workers_parent_leaves_malloc_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from yatagarasu.workers.supervisor import Supervisor

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    tuned: list[object] = []
    monkeypatch.setattr("yatagarasu.tap.keep_freed_memory", lambda *args: tuned.append(args))
    reactor = MemoryReactorClock()
    config = {"buckets": [bucket_entry()], "server": {"workers": 2}}
    options = Options()
    options["reactor"] = reactor
    options["assembly"] = assemble(parse_config(config, {}), reactor)
    options["config"] = "unused.yaml"
    assert isinstance(makeService(options), Supervisor)
    assert tuned == []  # it serves no request; each worker tunes its own malloc


def test_the_workers_parent_binds_with_the_configured_listen_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from yatagarasu.tap import supervisor
    from yatagarasu.workers import sockets

    bound: list[tuple[str, int, int]] = []

    def bind(host: str, port: int, backlog: int) -> object:
        bound.append((host, port, backlog))
        return object()

    monkeypatch.setattr(sockets, "bind", bind)
    server = {"workers": 2, "port": 8090, "listen_backlog": 300}
    config = parse_config({"buckets": [bucket_entry()], "server": server}, {})
    supervisor("unused.yaml", MemoryReactorClock(), config, None).privilegedStartService()
    assert bound == [("127.0.0.1", 8090, 300)]


def test_twistd_logs_to_stdout_only_with_nodaemon_and_no_other_destination() -> None:
    from twisted.scripts.twistd import ServerOptions

    def parsed(*argv: str) -> ServerOptions:
        options = ServerOptions()
        options.parseOptions(list(argv))
        return options

    assert twistd_logs_to_stdout(parsed("-n"))
    assert twistd_logs_to_stdout(parsed("-n", "--logfile", "-"))
    assert not twistd_logs_to_stdout(parsed())  # a daemon: twistd.log
    assert not twistd_logs_to_stdout(parsed("-n", "--logfile", "proxy.log"))
    assert not twistd_logs_to_stdout(parsed("-n", "--syslog"))
    assert not twistd_logs_to_stdout(parsed("-n", "--logger", "twisted.logger.jsonFileLogObserver"))
    assert not twistd_logs_to_stdout(None)

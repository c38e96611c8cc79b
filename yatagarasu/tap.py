"""
The ``twistd yatagarasu`` command: options and ``makeService``.

Everything that can fail because of the configuration (YAML, validation, plugins, key and TLS
files) happens in :meth:`Options.postOptions`, which builds the first configuration generation
(:meth:`yatagarasu.reload.Reloader.first`, i.e. ``load_config`` + the composition root
:func:`yatagarasu.assembly.assemble`) before twistd listens or daemonizes: a bad configuration
prints one line naming the dotted key path and exits with status 1. ``--check`` runs the same
code and stops before the listeners; ``SIGHUP`` and ``POST /admin/reload`` run it again on the
same file (hot reload).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from yatagarasu.assembly import Assembly
from yatagarasu.collector import YoungThreshold
from yatagarasu.config import Config, ConfigError, load_config
from yatagarasu.config.migrate import explain_file
from yatagarasu.config.schema import ServerConfig
from yatagarasu.heap import keep_freed_memory
from yatagarasu.interfaces import ISiblings
from yatagarasu.logs import check_log_file
from yatagarasu.observability.reactor_lag import ReactorLagProbe
from yatagarasu.reload import Reloader
from yatagarasu.workers.child import WorkerChannel

log = Logger()


class Options(usage.Options):
    """Command-line options of ``twistd yatagarasu``."""

    synopsis = "--config PATH [--check]"
    longdesc = "Serve S3 buckets over HTTP: a read-only, caching, authenticating proxy."
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "Path to the YAML configuration file (required)."],
        ["worker", None, None, "Internal: run as worker N of a parent (server.workers > 1)."],
        ["worker-fds", None, None, "Internal: a worker's inherited descriptors (sockets, pipes)."],
    ]
    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "check",
            None,
            "Validate the configuration, build everything but the listeners, print a summary"
            " and exit.",
        ],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("--config PATH is required")
        # The one place that touches the global reactor: twistd has chosen it by now (its
        # --reactor option comes first), and everything below receives it as a parameter.
        from twisted.internet import reactor

        try:
            reloader, assembly = first_generation(
                path,
                reactor,
                lambda config: self._worker_channel(config, reactor),
                log_to_stdout=twistd_logs_to_stdout(getattr(self, "parent", None)),
            )
        except ConfigError as e:
            sys.stderr.write(f"yatagarasu: invalid configuration {path}: {e}\n")
            raise SystemExit(1) from None
        if self["check"]:
            sys.stdout.write(summary(path, assembly))
            raise SystemExit(0)
        for warning in assembly.config.deprecations:
            # buffered until twistd starts logging, then written first
            log.warn("deprecated configuration key: {warning}", warning=warning)
        self["assembly"] = assembly
        self["reloader"] = reloader
        self["reactor"] = reactor

    def _worker_channel(self, config: Config, reactor: Any) -> WorkerChannel | None:
        if self["worker"] is None:
            return None
        try:
            worker_id = int(self["worker"])
            fds = [int(fd) for fd in (self["worker-fds"] or "").split(",")]
        except ValueError:
            raise usage.UsageError("--worker N needs --worker-fds FD,FD,...") from None
        self["worker-fds"] = fds
        return WorkerChannel(reactor, worker_id, config.server.workers)


def twistd_logs_to_stdout(twistd_options: Any) -> bool:
    """
    :param twistd_options: twistd's own options (``None`` when not run by twistd).
    :returns: whether twistd's log observer writes text lines to standard output: ``-n``
        without ``--logfile`` (or with ``--logfile -``), ``--syslog`` or ``--logger``.
    """
    if twistd_options is None:
        return False
    get = twistd_options.get
    return bool(
        get("nodaemon")
        and get("logfile") in (None, "", "-")
        and not get("syslog")
        and get("logger") is None
    )


def first_generation(
    path: str,
    reactor: Any,
    worker_channel: Callable[[Config], ISiblings | None] = lambda config: None,
    log_to_stdout: bool = False,
) -> tuple[Reloader, Assembly]:
    """
    Read the file once and build the first generation from it.

    :param path: the configuration file.
    :param reactor: what :func:`yatagarasu.assembly.assemble` builds with.
    :param worker_channel: this worker's channel to the others for a configuration
        (``server.workers`` > 1 and ``--worker``), else ``None``.
    :param log_to_stdout: whether twistd's own log observer writes to standard output
        (:func:`twistd_logs_to_stdout`).
    :returns: the reloader of that file (hot reload) and the first generation built from it.
    :raises ConfigError: the first problem, naming ``yatagarasu-config migrate`` when a Rust
        Yatagarasu spelling caused it (whether the loader or a plugin found it).
    """
    config = _load(path)
    check_log_file(config.logging)  # opened once, at start-up; a reload keeps it
    siblings = worker_channel(config)
    # A reload asked for through one worker's admin API reaches the others (the parent passes
    # SIGHUP on); a SIGHUP to the parent reaches every worker already.
    announce = None if siblings is None else (lambda _report: siblings.announce_reload())
    reloader = Reloader(
        reactor,
        partial(_load, path),
        siblings=siblings,
        announce=announce,
        log_to_stdout=log_to_stdout,
    )
    try:
        return reloader, reloader.first(config)
    except ConfigError as e:
        raise explain_file(e, path) from None


def _load(path: str) -> Config:
    # Reloads name the migrate command too when a Rust spelling is what the loader refused.
    try:
        return load_config(path)
    except ConfigError as e:
        raise explain_file(e, path) from None


def summary(path: str, assembly: Assembly) -> str:
    """
    Describe a valid configuration in a few lines (for ``--check``).

    :param path: the file it came from.
    :param assembly: what was built from it.
    :returns: the text to print.
    """
    config, access, caching = assembly.config, assembly.access, assembly.caching
    server = config.server
    scheme = "https" if server.tls else "http"
    lines = [
        f"configuration OK: {path}",
        f"listener: {scheme}://{_url_host(server.host)}:{server.listen_port}"
        + (" (socket from systemd)" if server.socket_activation else ""),
        *_workers_summary(server),
        f"metrics: {_metrics_summary(config)}",
        f"buckets: {len(config.buckets)}",
    ]
    lines[1:1] = [f"deprecated: {warning}" for warning in config.deprecations]
    for bucket in config.buckets:
        targets = ", ".join(
            ("" if not bucket.s3.replicas else f"{r.name}: ")
            + f"s3://{r.section.bucket} ({r.section.endpoint or f'AWS {r.section.region}'},"
            + f" credentials {r.credentials.source})"
            for r in assembly.clients[bucket.name].replicas
        )
        auth_scheme = access.schemes.get(bucket.name)
        extras = [f"auth: {auth_scheme.name}" if auth_scheme is not None else "public"]
        if bucket.name in access.ip_filters:
            extras.append("ip filter")
        if bucket.name in caching.policies:
            extras.append("cached")
        rate = bucket.bucket_rate
        if rate is not None and assembly.limiter is not None:
            extras.append(f"rate limit {rate.requests_per_second:g}/s burst {rate.capacity}")
        lines.append(f"  {bucket.path_prefix} -> {targets} [{bucket.name}; {', '.join(extras)}]")
    if caching.cache is not None:
        lines.append("cache layers: " + ", ".join(layer.name for layer in caching.cache.layers))
    if assembly.audit is not None:
        lines.append("audit outputs: " + ", ".join(sink.name for sink in assembly.audit.sinks))
    observability = config.observability
    if assembly.tracing is not None:
        tracing = observability.tracing
        where = f" to {tracing.traces_url}" if tracing.exporter == "otlp" else ""
        lines.append(
            f"tracing: {tracing.exporter}{where}, sampling {tracing.sampling_ratio:g}"
            f"{', traceparent in and to S3' if tracing.propagate_context else ''}"
        )
    if observability.slow_query.enabled:
        lines.append(f"slow-request log: over {observability.slow_query.threshold_ms:g} ms")
    limits = config.rate_limit
    if limits is not None and assembly.limiter is not None:
        rules = [
            f"{name} {rule.requests_per_second:g}/s burst {rule.capacity}"
            for name, rule in (
                ("global", limits.global_),
                ("per_ip", limits.per_ip),
                ("per_user", limits.per_user),
            )
            if rule is not None
        ]
        lines.append(
            f"rate limits: {limits.algorithm}, {limits.backend}"
            + (f" ({', '.join(rules)})" if rules else "")
        )
    admin = "jwt with admin_claims" if access.admin else "disabled, answers 403"
    where = " on the metrics listener only" if config.metrics.admin_on_own_listener else ""
    lines.append(f"admin API: /{'/'.join(server.admin_segments)}/... ({admin}){where}")
    return "\n".join(lines) + "\n"


def _workers_summary(server: ServerConfig) -> list[str]:
    if server.workers == 1:
        return []
    bound = ", each bound to a CPU" if server.worker_cpu_affinity else ""
    return [f"workers: {server.workers} processes{bound}"]


def _metrics_summary(config: Config) -> str:
    listener = config.metrics.listener(config.server)
    if listener is not None:
        host, port = listener
        return f"http://{_url_host(host)}:{port}/metrics (its own listener; 404 on the main port)"
    return "/metrics on the main listener" if config.metrics.enabled else "disabled"


def _url_host(host: str) -> str:
    """:returns: ``host`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def makeService(options: Options) -> IService:
    """
    Build the root service from parsed options.

    :param options: parsed (and validated) options.
    :returns: the root ``MultiService``.
    """
    from yatagarasu.service import ProxyService, WorkerMode
    from yatagarasu.systemd import SystemdNotifier

    reactor, assembly = options["reactor"], options["assembly"]
    reloader = options.get("reloader")
    if assembly.siblings is not None:
        fds = options["worker-fds"]
        worker = WorkerMode(assembly.siblings, fds[:-2], (fds[-2], fds[-1]))
        service = ProxyService(reactor, assembly, SystemdNotifier(None), reloader, worker)
    else:
        notifier = SystemdNotifier.from_environ(os.environ)
        if assembly.config.server.workers > 1:  # the parent serves no request
            return supervisor(options["config"], reactor, assembly.config, notifier)
        service = ProxyService(reactor, assembly, notifier, reloader)
    # requests under way do not start collections that find nothing (yatagarasu.collector)
    YoungThreshold().setServiceParent(service)
    # request bodies reuse the heap, which is given back every few seconds (yatagarasu.heap)
    trims = keep_freed_memory(os.environ, reactor)
    if trims is not None:
        trims.setServiceParent(service)
    if assembly.config.metrics.enabled:
        ReactorLagProbe(reactor, assembly.metrics.reactor_lag).setServiceParent(service)
    return service


def supervisor(path: str, reactor: Any, config: Config, notifier: Any) -> IService:
    """
    :param path: the configuration file (the workers read it again).
    :param reactor: the reactor (processes, time).
    :param config: the validated configuration.
    :param notifier: the systemd notifier.
    :returns: the parent's service: it binds the listeners and runs ``server.workers``
        worker processes.
    """
    from functools import partial

    from yatagarasu.workers.sockets import bind
    from yatagarasu.workers.supervisor import Supervisor, worker_command

    server = config.server
    listeners = [("proxy", server.host, server.listen_port)]
    metrics = config.metrics.listener(server)
    if metrics is not None:
        listeners.append(("metrics", *metrics))

    def spawn(protocol: Any, executable: str, args: list[str], env: Any, fds: Any) -> Any:
        return reactor.spawnProcess(protocol, executable, args, env=env, childFDs=fds)

    command = partial(worker_command, path)
    binder = partial(bind, backlog=server.listen_backlog)
    return Supervisor(reactor, config, listeners, command, spawn, binder, notifier)

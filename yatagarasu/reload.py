"""
Hot reload: ``SIGHUP`` and ``POST /admin/reload`` turn the configuration file into a new
generation and swap it in for new requests.

The file is loaded and validated by the same code as start-up and ``--check``
(``load_config`` + :func:`yatagarasu.assembly.assemble`). A generation that fails to build, or
that would change a listener (or the logging, audit or tracing setup), is refused and the running
one stays.
Otherwise the listening sites serve the new Resource tree at once; requests in flight finish on
the generation they pinned, whose S3 pools and dropped cache layers close after its last
request. Cache layers whose section did not change are reused with their contents. One
:class:`~yatagarasu.metrics.Metrics` lives as long as the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IAgent

from yatagarasu.assembly import Assembly, Lifecycle, assemble
from yatagarasu.config.schema import Config
from yatagarasu.errors import ConfigError, HTTPError
from yatagarasu.interfaces import ISiblings
from yatagarasu.metrics import Metrics
from yatagarasu.systemd import SystemdNotifier
from yatagarasu.web.site import ProxySite, Served

log = Logger()

#: what every refused listener change says
RESTART = "listener changes need a restart"
#: what a refused change of the worker processes says
WORKERS_RESTART = "worker process changes need a restart"


@dataclass(frozen=True)
class ReloadReport:
    """
    The outcome of one reload.

    :ivar status: 200 applied; 400 the configuration is invalid or changes a listener; 409
        refused (another reload runs, or the proxy is draining); 500 an unexpected failure.
    :ivar message: what happened (for errors, the line that was logged).
    :ivar generation: the generation serving new requests afterwards.
    :ivar added: bucket names new in this generation.
    :ivar removed: bucket names it no longer has.
    :ivar changed: bucket names whose settings differ.
    """

    status: int
    message: str
    generation: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the new generation was applied."""
        return self.status == 200

    def document(self) -> dict[str, Any]:
        """:returns: the ``POST /admin/reload`` success body."""
        return {
            "status": "success",
            "generation": self.generation,
            "buckets": {
                "added": list(self.added),
                "removed": list(self.removed),
                "changed": list(self.changed),
            },
        }


def _listener_text(listener: tuple[str, int] | None) -> str:
    return "none" if listener is None else f"{listener[0]}:{listener[1]}"


def refuse_restart_changes(old: Config, new: Config) -> None:
    """
    :param old: the running configuration.
    :param new: the one a reload would apply.
    :raises ConfigError: naming the first key that only a restart can change: the listener's
        address, port, listen backlog and TLS on/off, the workers and their CPU binding, the
        metrics listener, the logging, audit and tracing setup. (TLS files are read again: new
        connections get the new certificate.)
    """
    s, n = old.server, new.server
    changes: list[tuple[str, object, object, str]] = [
        ("server.address", s.host, n.host, RESTART),
        ("server.port", s.listen_port, n.listen_port, RESTART),
        ("server.tls", "on" if s.tls else "off", "on" if n.tls else "off", RESTART),
        ("server.workers", s.workers, n.workers, WORKERS_RESTART),
        (
            "server.worker_cpu_affinity",
            s.worker_cpu_affinity,
            n.worker_cpu_affinity,
            WORKERS_RESTART,
        ),
        ("server.listen_backlog", s.listen_backlog, n.listen_backlog, RESTART),
        ("server.socket_activation", s.socket_activation, n.socket_activation, RESTART),
    ]
    for key, before, after, why in changes:
        if before != after:
            raise ConfigError(key, f"changed from {before} to {after}; {why}")
    before_metrics, after_metrics = old.metrics.listener(s), new.metrics.listener(n)
    if before_metrics != after_metrics:
        raise ConfigError(
            "metrics.port",
            f"the metrics listener changed from {_listener_text(before_metrics)} to"
            f" {_listener_text(after_metrics)}; {RESTART}",
        )
    if old.logging != new.logging:
        raise ConfigError("logging", "changed; logging changes need a restart")
    if old.audit_log != new.audit_log:
        # The listening site records through one audit trail for the life of the process.
        raise ConfigError("audit_log", "changed; audit_log changes need a restart")
    if old.observability.tracing != new.observability.tracing:
        # The listening site traces through one tracer (and exporter) for the life of the process.
        raise ConfigError(
            "observability.tracing", "changed; observability.tracing changes need a restart"
        )


def bucket_changes(old: Config, new: Config) -> tuple[tuple[str, ...], ...]:
    """
    :returns: ``(added, removed, changed)`` bucket names, each in configuration order.
    """
    before = {b.name: b for b in old.buckets}
    after = {b.name: b for b in new.buckets}
    added = tuple(name for name in after if name not in before)
    removed = tuple(name for name in before if name not in after)
    changed = tuple(name for name in after if name in before and before[name] != after[name])
    return added, removed, changed


def _contains(services: Sequence[IService], service: IService) -> bool:
    return any(service is other for other in services)


def monotonic_usec() -> int:
    """:returns: ``CLOCK_MONOTONIC`` in microseconds (what systemd's ``MONOTONIC_USEC`` wants)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@dataclass(eq=False)
class _Generation:
    number: int
    assembly: Assembly
    served: list[Served] = field(default_factory=list)


class Reloader(Service):
    """
    Builds configuration generations and swaps them in; runs the current one's background
    services (JWKS refresh timers, cache layer services, purge subscribers).

    :param reactor: time, threads, TCP.
    :param load: reads and validates the configuration (``load_config`` of the file the
        process was started with).
    :param agents: per bucket name, the HTTP agent of its S3 client (tests).
    :param notifier: tells systemd about reloads (``RELOADING=1`` ... ``READY=1``).
    :param announce: called with the report after a successful reload asked for through the
        admin API (to pass it on to sibling worker processes).
    :param metrics: the process's metrics (default: new ones).
    :param lifecycle: the shutdown state (default: a new one).
    :param siblings: when this process is one worker of several, the channel to the others
        (every generation is built with it).
    :param clock_usec: ``CLOCK_MONOTONIC`` in microseconds, for ``MONOTONIC_USEC``.
    :param log_to_stdout: whether twistd's own log observer writes to standard output (the
        access log then writes there in batches).
    """

    def __init__(
        self,
        reactor: Any,
        load: Callable[[], Config],
        *,
        agents: Mapping[str, IAgent] | None = None,
        notifier: SystemdNotifier | None = None,
        announce: Callable[[ReloadReport], None] | None = None,
        metrics: Metrics | None = None,
        lifecycle: Lifecycle | None = None,
        siblings: ISiblings | None = None,
        clock_usec: Callable[[], int] = monotonic_usec,
        log_to_stdout: bool = False,
    ) -> None:
        self._reactor = reactor
        self._load = load
        self._agents = agents
        self.notifier = notifier or SystemdNotifier(None)
        self.announce = announce
        self.metrics = metrics or Metrics()
        self.lifecycle = lifecycle or Lifecycle()
        self._siblings = siblings
        self._clock_usec = clock_usec
        self._log_to_stdout = log_to_stdout
        self._generation: _Generation | None = None
        self._services: list[IService] = []
        self._retiring: set[Deferred[None]] = set()
        self._busy = False
        self._sites: list[ProxySite] = []
        #: called with each new generation's assembly right after it is swapped in (the
        #: service swaps the listener's TLS options this way)
        self.on_swap: list[Callable[[Assembly], None]] = []

    @classmethod
    def around(cls, reactor: Any, assembly: Assembly) -> Reloader:
        """
        :param reactor: the reactor the assembly was built with.
        :param assembly: an assembly built without a reloader.
        :returns: a reloader serving it as generation 1, reloading its configuration again.
        """
        reloader = cls(
            reactor,
            lambda: assembly.config,
            metrics=assembly.metrics,
            lifecycle=assembly.lifecycle,
        )
        reloader._adopt(assembly)
        return reloader

    def first(self, config: Config | None = None) -> Assembly:
        """
        Build generation 1.

        :param config: the configuration, when the caller has loaded it already (start-up
            reads the file once); default: loaded now.
        :returns: its assembly (its sites are the ones to listen on).
        :raises ConfigError: the configuration is invalid.
        """
        assembly = self._assemble(config if config is not None else self._load(), None)
        self._adopt(assembly)
        return assembly

    def _adopt(self, assembly: Assembly) -> None:
        self._sites = [s for s in (assembly.site, assembly.metrics_site) if s is not None]
        self._generation = _Generation(1, assembly, [s.served for s in self._sites])
        self._services = list(assembly.services)
        self.metrics.generation = 1

    def _assemble(self, config: Config, previous: Assembly | None) -> Assembly:
        return assemble(
            config,
            self._reactor,
            agents=self._agents,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
            previous=previous,
            reload=self.admin_reload,
            siblings=self._siblings,
            log_to_stdout=self._log_to_stdout,
        )

    @property
    def current(self) -> Assembly:
        """The assembly new requests are served by."""
        assert self._generation is not None, "first() has not run"
        return self._generation.assembly

    @property
    def generation(self) -> int:
        """The number of the current generation (1 at start-up)."""
        return self._generation.number if self._generation is not None else 0

    @property
    def retiring(self) -> int:
        """Older generations still serving requests that started on them."""
        return len(self._retiring)

    # -- background services of the current generation ------------------------------------

    def startService(self) -> None:
        super().startService()
        for service in self._services:
            service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop(list(reversed(self._services))))

    async def _stop(self, services: list[IService]) -> None:
        stops = [maybeDeferred(s.stopService) for s in services if s.running]
        await DeferredList(stops, consumeErrors=True)

    async def close(self) -> None:
        """Wait for retiring generations, then close the current one (end of the drain)."""
        while self._retiring:
            await DeferredList(list(self._retiring), consumeErrors=True)
        if self._generation is not None:
            await self._generation.assembly.close()

    # -- reloading --------------------------------------------------------------------------

    async def admin_reload(self) -> dict[str, Any]:
        """
        ``POST /admin/reload``: reload, then tell :attr:`announce`.

        :returns: the success document.
        :raises HTTPError: the report's status and message when nothing was applied.
        """
        report = await self.reload()
        if not report.ok:
            raise HTTPError(report.status, report.message)
        if self.announce is not None:
            self.announce(report)
        return report.document()

    async def reload(self) -> ReloadReport:
        """
        Load the configuration again and, when it is valid, swap the new generation in.

        A reload while another runs, or during a drain, is refused (409) and changes
        nothing: not counted, nothing sent to systemd.

        :returns: what happened.
        """
        if self._busy or self.lifecycle.draining:
            why = "another reload is in progress" if self._busy else "the proxy is shutting down"
            log.warn("configuration reload refused: {reason}", reason=why)
            return ReloadReport(409, f"reload refused: {why}", self.generation)
        self._busy = True
        self.notifier.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={self._clock_usec()}",
            "STATUS=reloading the configuration",
        )
        try:
            report = await self._reload()
        finally:
            self._busy = False
        status = f"STATUS=serving {len(self.current.config.buckets)} bucket(s), generation"
        status += f" {self.generation}"
        if not report.ok:
            status += f" (last reload failed: {' '.join(report.message.splitlines())})"
        self.notifier.notify("READY=1", status)
        return report

    async def _reload(self) -> ReloadReport:
        old = self.current
        try:
            config = self._load()
            refuse_restart_changes(old.config, config)
            new = self._assemble(config, old)
        except ConfigError as e:
            return self._failed(400, str(e))
        except Exception as e:
            log.failure("configuration reload failed unexpectedly")
            return self._failed(500, f"unexpected error: {e!r}")
        added, removed, changed = bucket_changes(old.config, config)
        await self._swap(new)
        self.metrics.config_reload("ok")
        log.info(
            "configuration reloaded: generation {generation}; buckets added {added},"
            " removed {removed}, changed {changed}",
            generation=self.generation,
            added=list(added),
            removed=list(removed),
            changed=list(changed),
        )
        return ReloadReport(200, "reloaded", self.generation, added, removed, changed)

    def _failed(self, status: int, message: str) -> ReloadReport:
        self.metrics.config_reload("error")
        log.error(
            "configuration reload failed, still serving generation {generation}: {error}",
            generation=self.generation,
            error=message,
        )
        return ReloadReport(status, message, self.generation)

    async def _swap(self, new: Assembly) -> None:
        assert self._generation is not None
        old = self._generation
        fresh = [s for s in (new.site, new.metrics_site) if s is not None]
        # The listening sites stay; what they serve is swapped (the listener check made sure
        # both generations have the same sites).
        for site, built in zip(self._sites, fresh, strict=True):
            site.serve(built.served)
        self._generation = _Generation(old.number + 1, new, [s.served for s in fresh])
        self.metrics.generation = self._generation.number
        for callback in self.on_swap:
            callback(new)
        kept = old.assembly.caching.kept_by(new.caching)
        dropped = [
            layer
            for layer in (old.assembly.caching.cache.layers if old.assembly.caching.cache else [])
            if not any(layer is k for k in kept)
        ]
        # A dropped layer's services (a disk layer's closes the layer) stop with its last request.
        late = old.assembly.caching.services_of(dropped)
        now = [s for s in self._services if not _contains(new.services, s)]
        now = [s for s in now if not _contains(late, s)]
        started = [s for s in new.services if not _contains(self._services, s)]
        self._services = list(new.services)
        if self.running:
            for service in started:
                service.startService()
        retiring = Deferred.fromCoroutine(self._retire(old, kept, late))
        self._retiring.add(retiring)
        retiring.addErrback(lambda f: log.failure("retiring an old generation failed", f))
        retiring.addBoth(lambda _: self._retiring.discard(retiring))
        await self._stop(list(reversed(now)))

    async def _retire(self, old: _Generation, kept: list[Any], services: list[IService]) -> None:
        for served in old.served:
            await served.wait_idle()
        # The last request has just ended: let what runs after its finish() (a cache fill
        # completing) run before its layers close.
        await deferLater(self._reactor, 0)
        await self._stop(list(reversed(services)))
        await old.assembly.close(kept)
        log.info("configuration generation {generation} retired", generation=old.number)

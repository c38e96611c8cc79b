"""``GET /health`` (the process is up) and ``GET /ready`` (it can serve traffic)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime

from yatagarasu import __version__
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.web.async_resource import ReadOnlyResource
from yatagarasu.web.responses import write_json
from yatagarasu.web.site import ProxyRequest


class HealthResource(ReadOnlyResource):
    """
    Liveness: 200 ``{"status": "healthy", "version", "uptime_seconds"}`` while the process runs.

    :param clock: time source.
    :param started: when the process started (``clock.seconds()`` then).
    """

    def __init__(self, clock: IReactorTime, started: float) -> None:
        super().__init__()
        self._clock = clock
        self._started = started

    def answer(self, request: ProxyRequest) -> None:
        uptime = int(self._clock.seconds() - self._started)
        write_json(
            request, 200, {"status": "healthy", "version": __version__, "uptime_seconds": uptime}
        )


class ReadyResource(ReadOnlyResource):
    """
    Readiness: 200 ``{"status": "ready", "backends": {...}}`` while at least one bucket's
    upstream is usable; 503 ``unavailable`` when none is, ``shutting_down`` while draining.

    Each bucket lists its replicas by name (``primary`` for a bucket without ``replicas``)
    with their circuit breaker's state: ``{"pub": {"status": "healthy", "replicas":
    {"primary": {"state": "closed", "endpoint": "http://127.0.0.1:9000", "priority": 0,
    "consecutive_failures": 0, "last_error": null, "credentials": {"source": "static",
    "state": "ready", "expires_in_seconds": null, "last_error": null}}}}}``. A bucket is
    ``healthy`` while some replica has usable credentials and a breaker letting requests
    through (closed, or half-open with a trial slot free). 503 ``unavailable`` too while some
    bucket has no replica with usable credentials (not fetched yet, or every fetch failed).

    With several worker processes, 503 ``workers_down`` while any worker of the instance is
    not running (one crashed and is being restarted, or they are still starting).

    :param backends: the replica set of every bucket, by bucket name.
    :param draining: tells whether a graceful shutdown has begun.
    :param workers_up: tells whether every worker process is up (``None``: a single process).
    """

    def __init__(
        self,
        backends: Mapping[str, ReplicaSet],
        draining: Callable[[], bool],
        workers_up: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        self._backends = backends
        self._draining = draining
        self._workers_up = workers_up

    def answer(self, request: ProxyRequest) -> None:
        backends = {
            name: {
                "status": "healthy" if replicas.usable else "unhealthy",
                "replicas": {
                    replica.name: {
                        "state": replica.breaker.state.value,
                        "endpoint": replica.client.origin,
                        "priority": replica.priority,
                        "consecutive_failures": replica.breaker.consecutive_failures,
                        "last_error": replica.breaker.last_error,
                        "credentials": dict(replica.credentials.status()),
                    }
                    for replica in replicas.replicas
                },
            }
            for name, replicas in self._backends.items()
        }
        if self._draining():
            status, code = "shutting_down", 503
        elif self._workers_up is not None and not self._workers_up():
            status, code = "workers_down", 503
        elif not any(replicas.usable for replicas in self._backends.values()) or not all(
            replicas.has_credentials for replicas in self._backends.values()
        ):
            status, code = "unavailable", 503
        else:
            status, code = "ready", 200
        write_json(request, code, {"status": status, "backends": backends})

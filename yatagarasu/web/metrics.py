"""``GET /metrics``: the Prometheus text exposition of :class:`yatagarasu.metrics.Metrics` (of
every worker process, labelled ``worker``, when ``server.workers`` > 1)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.web.resource import IResource

from yatagarasu.interfaces import ISiblings
from yatagarasu.metrics import Metrics, merge_expositions
from yatagarasu.web.async_resource import ReadOnlyResource
from yatagarasu.web.responses import write_body
from yatagarasu.web.site import ProxyRequest

_CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")


def metrics_resource(metrics: Metrics, siblings: ISiblings | None) -> IResource:
    """
    :param metrics: this process's metrics.
    :param siblings: the other worker processes (``None``: a single process).
    :returns: the ``/metrics`` resource; with workers, the answering worker gathers every
        worker's metrics through the parent, and it answers for the other workers.
    """
    if siblings is None:
        return MetricsResource(metrics)
    siblings.serve("metrics", lambda _argument: metrics.render().decode())
    return InstanceMetricsResource(siblings)


class MetricsResource(ReadOnlyResource):
    """
    Rendered synchronously (a scrape takes well under a millisecond).

    :param metrics: the process's metrics.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def answer(self, request: ProxyRequest) -> None:
        write_body(request, 200, _CONTENT_TYPE, self._metrics.render())


class InstanceMetricsResource(ReadOnlyResource):
    """
    Every worker's metrics, each sample labelled ``worker="N"``.

    :param siblings: the workers (this one included).
    """

    def __init__(self, siblings: ISiblings) -> None:
        super().__init__()
        self._siblings = siblings

    def answer(self, request: ProxyRequest) -> None:
        gathered: Deferred[dict[int, str]] = self._siblings.gather("metrics", None)
        gathered.addCallback(self._write, request)

    @staticmethod
    def _write(parts: dict[int, str], request: ProxyRequest) -> None:
        if not request._disconnected:
            write_body(request, 200, _CONTENT_TYPE, merge_expositions(parts))

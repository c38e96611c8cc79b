"""``GET /metrics``: the Prometheus text exposition of :class:`yatagarasu.metrics.Metrics`."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from yatagarasu.metrics import Metrics
from yatagarasu.web.async_resource import ReadOnlyResource
from yatagarasu.web.responses import write_body
from yatagarasu.web.site import ProxyRequest

_CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")


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

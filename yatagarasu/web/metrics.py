"""``GET /metrics``: the Prometheus text exposition of :class:`yatagarasu.metrics.Metrics`."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.server import Request

from yatagarasu.metrics import Metrics
from yatagarasu.web.responses import ReadOnlyResource


class MetricsResource(ReadOnlyResource):
    """
    Rendered synchronously (a scrape takes well under a millisecond).

    :param metrics: the process's metrics.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        body = self._metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

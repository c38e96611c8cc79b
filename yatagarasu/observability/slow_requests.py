"""
The slow-request log (``observability.slow_query``): a request that took longer than the
threshold, from its arrival to the end of its response, is logged at warn with its request id
and where the time went, from the request's :class:`RequestTimings`.
"""

from __future__ import annotations

from twisted.logger import Logger

from yatagarasu.config.schema import SlowQueryConfig
from yatagarasu.observability.timings import (
    AUTH,
    CACHE_LOOKUP,
    UPSTREAM_FIRST_BYTE,
    RequestTimings,
)

slow_log = Logger(namespace="yatagarasu.slow_requests")

_HEADLINE = (
    "slow request {request_id}: {method} {path} {status} in {duration_ms}ms"
    " (threshold {threshold_ms:g}ms)"
)
_BREAKDOWN = (
    ": auth {auth_ms}ms, cache lookup {cache_lookup_ms}ms,"
    " upstream first byte {upstream_first_byte_ms}ms, transfer {transfer_ms}ms"
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class SlowRequestLog:
    """
    :param config: the ``observability.slow_query`` section (enabled).
    """

    def __init__(self, config: SlowQueryConfig) -> None:
        self.threshold_ms = config.threshold_ms
        self.include_breakdown = config.include_breakdown
        self._format = _HEADLINE + (_BREAKDOWN if config.include_breakdown else "")

    def observe(
        self,
        timings: RequestTimings,
        ended: float,
        *,
        request_id: str,
        method: str,
        path: str,
        status: int,
        bucket: str | None,
    ) -> bool:
        """
        Log the request at warn when it was slower than the threshold.

        :param timings: its timing record.
        :param ended: when its response ended (clock seconds).
        :param request_id: its ``X-Request-ID``.
        :param method: its method.
        :param path: its path (no query string).
        :param status: the status sent.
        :param bucket: the bucket it addressed, if any.
        :returns: whether it was logged.
        """
        duration_ms = _ms(ended - timings.started)
        if duration_ms <= self.threshold_ms:
            return False
        fields: dict[str, object] = {}
        if self.include_breakdown:
            body_from = timings.body_from
            fields = {
                "auth_ms": _ms(timings.seconds(AUTH)),
                "cache_lookup_ms": _ms(timings.seconds(CACHE_LOOKUP)),
                "upstream_first_byte_ms": _ms(timings.seconds(UPSTREAM_FIRST_BYTE)),
                "transfer_ms": _ms(ended - body_from) if body_from is not None else 0.0,
            }
        trace_id = timings.trace_id
        if trace_id is not None:
            fields["trace_id"] = trace_id
        slow_log.warn(
            self._format,
            request_id=request_id,
            method=method,
            path=path,
            status=status,
            bucket=bucket,
            duration_ms=duration_ms,
            threshold_ms=self.threshold_ms,
            **fields,
        )
        return True

"""
Per-request observability below the web layer: the timing record of one request
(:mod:`~yatagarasu.observability.timings`), the process's OpenTelemetry tracer
(:mod:`~yatagarasu.observability.tracing`) and the slow-request log
(:mod:`~yatagarasu.observability.slow_requests`).

The web layer, the S3 client and the tiered cache all write into the one
:class:`~yatagarasu.observability.timings.RequestTimings` a request carries (none at all when
neither tracing nor the slow-request log is on); spans and the slow-request log are both made
from it.
"""

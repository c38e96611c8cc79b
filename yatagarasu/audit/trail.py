"""
The audit trail the site writes to: redacts each record, then hands it to every sink.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import IService

from yatagarasu.audit.record import Redaction
from yatagarasu.interfaces import IAuditSink
from yatagarasu.values import AuditRecord

#: the routes ``audit_log.skip_probes`` leaves out
PROBE_PATHS = frozenset({b"/health", b"/ready", b"/metrics"})


class AuditTrail:
    """
    :param sinks: where records go, in ``audit_log.outputs`` order.
    :param redaction: what is removed from every record first.
    :param skip_probes: whether ``/health``, ``/ready`` and ``/metrics`` requests are left out.
    """

    def __init__(
        self, sinks: Sequence[IAuditSink], redaction: Redaction, *, skip_probes: bool = False
    ) -> None:
        self.sinks = tuple(sinks)
        self._writes = tuple(sink.write for sink in self.sinks)
        self._redaction = redaction
        self._skip_probes = skip_probes

    def records(self, path: bytes) -> bool:
        """
        :param path: the request's path (no query string).
        :returns: whether a request to it is recorded.
        """
        return not (self._skip_probes and path in PROBE_PATHS)

    def emit(self, record: AuditRecord) -> None:
        """
        Redact ``record`` and queue it in every sink.

        :param record: the record of a request whose response ended.
        """
        redaction = self._redaction
        if record.referer is not None or redaction.user_agent:  # else nothing to redact
            redaction.apply(record)
        for write in self._writes:
            write(record)

    def reopen(self) -> None:
        """Reopen every sink's files and connections (``SIGUSR1``)."""
        for sink in self.sinks:
            sink.reopen()

    def services(self) -> list[IService]:
        """:returns: every sink's services, in order."""
        return [service for sink in self.sinks for service in sink.services()]

"""
An audit sink as a third party would write it: chosen record fields as CSV lines.

Configuration::

    audit_log:
      enabled: true
      outputs: [csv]
      csv: {path: /var/log/yatagarasu/audit.csv, fields: [correlation_id, response_status]}

Lines are queued by ``write`` and appended every ``flush_interval_seconds`` and when the sink's
service stops (small appends on the reactor thread: fine for a test sink).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink, IAuditSinkFactory
from yatagarasu.values import AuditRecord

log = Logger()
FIELD_NAMES = [f.name for f in fields(AuditRecord)]


@implementer(IAuditSink)
class CsvSink:
    name = "csv"

    def __init__(self, path: str, columns: list[str], interval: float, clock: Any) -> None:
        self.counts = {"written": 0, "failed": 0, "dropped": 0}
        self._path = path
        self._columns = columns
        self._rows: list[list[Any]] = []
        self._service = _Flusher(self, interval, clock)

    def write(self, record: AuditRecord) -> None:
        self._rows.append([getattr(record, column) for column in self._columns])

    def reopen(self) -> None:
        self.flush()

    def services(self) -> list[IService]:
        return [self._service]

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        if not rows:
            return
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        try:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(text.getvalue())
        except OSError as e:
            self.counts["failed"] += len(rows)
            log.error("csv audit sink: {error}", error=str(e))
        else:
            self.counts["written"] += len(rows)


class _Flusher(Service):
    def __init__(self, sink: CsvSink, interval: float, clock: Any) -> None:
        self._sink = sink
        self._interval = interval
        self._loop = LoopingCall(sink.flush)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._sink.flush()


@implementer(IPlugin, IAuditSinkFactory)
class CsvSinkFactory:
    name = "csv"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> CsvSink:
        unknown = set(settings) - {"path", "fields", "flush_interval_seconds"}
        if unknown:
            raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown key")
        target = settings.get("path")
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{path}.path", "is required (a file path)")
        columns = settings.get("fields", ["correlation_id"])
        if not isinstance(columns, list) or not columns:
            raise ConfigError(f"{path}.fields", "expected a non-empty list of record fields")
        for i, column in enumerate(columns):
            if column not in FIELD_NAMES:
                raise ConfigError(f"{path}.fields[{i}]", f"not a record field: {column!r}")
        interval = settings.get("flush_interval_seconds", 1.0)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ConfigError(f"{path}.flush_interval_seconds", "must be a number > 0")
        return CsvSink(target, list(columns), float(interval), reactor)

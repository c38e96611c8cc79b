"""Log observers for ``logging.format`` / ``logging.level`` / ``logging.file``."""

from __future__ import annotations

import json
import sys
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import provider

from yatagarasu.config.schema import LoggingConfig
from yatagarasu.per_second import PerSecond

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def is_default(config: LoggingConfig) -> bool:
    """
    :param config: the ``logging`` section.
    :returns: whether twistd's own log observer (``--logfile``, ``--syslog``) should be kept.
    """
    return config == LoggingConfig()


#: fields of an event that are Python objects, not data (the JSON line leaves them out)
_OBJECTS = frozenset({"log_logger", "log_source", "log_failure", "log_level", "log_trace"})


def _message(event: LogEvent) -> str:
    """
    The event's text: its ``log_format`` filled in.

    ``str.format_map`` does it in C; twisted.logger's own formatter (kept for what only it
    understands: ``{method()}`` calls, events without a format, unformattable ones) is pure
    Python and was most of the cost of an access-log line.
    """
    log_format = event.get("log_format")
    if isinstance(log_format, str):
        try:
            return log_format.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


def text_formatter() -> Any:
    """
    :returns: a formatter for ``FileLogObserver``: the lines of twisted.logger's
        ``textFileLogObserver`` (``<time> [<namespace>#<level>] <message>``), made faster for
        the access event written for every request.
    """
    stamps = PerSecond(formatTime)

    def clock(when: float | None) -> str:
        return formatTime(when) if when is None else stamps(when)

    def format_text(event: LogEvent) -> str | None:
        if "log_failure" in event or "log_system" in event:
            return formatEventAsClassicLogText(event, formatTime=clock)
        text = _message(event)
        if not text:
            return None
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        if "worker" in event:
            system = f"{system} worker {event['worker']}"
        text = text.replace("\n", "\n\t")
        return f"{clock(event.get('log_time'))} [{system}] {text}\n"

    return format_text


def _json_default(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return repr(value)


def format_json(event: LogEvent) -> str:
    """
    One JSON object per line (after an RS character, as twisted.logger's
    ``jsonFileLogObserver``): every field of the event that is data — ``request_id``,
    ``status``... and ``log_time``, ``log_namespace``, ``log_format`` — plus ``log_level`` (its
    name), ``log_text`` (the formatted message) and, for errors, ``log_failure`` (the
    traceback as text). Values JSON cannot carry are written as their ``repr``.
    """
    record = {key: value for key, value in event.items() if key not in _OBJECTS}
    level = event.get("log_level")
    record["log_level"] = level.name if level is not None else None
    record["log_text"] = _message(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["log_failure"] = failure.getTraceback()
    return f"\x1e{json.dumps(record, default=_json_default, skipkeys=True)}\n"


def with_fields(observer: ILogObserver, **fields: object) -> ILogObserver:
    """
    :param observer: where events go.
    :param fields: fields added to every event (``worker=N`` in a worker process).
    :returns: an observer adding them, then passing each event on.
    """

    @provider(ILogObserver)
    def add_fields(event: LogEvent) -> None:
        event.update(fields)
        observer(event)

    return cast(ILogObserver, add_fields)


def make_observer(config: LoggingConfig, stream: IO[str] | None = None) -> ILogObserver:
    """
    Build the log observer the configuration asks for.

    :param config: the ``logging`` section.
    :param stream: where to write (default: ``logging.file`` opened for appending, else stdout).
    :returns: an observer writing JSON lines or text, dropping events below ``level``.
    """
    if stream is None:
        stream = open(config.file, "a", encoding="utf-8") if config.file else sys.stdout  # noqa: SIM115
    formatter = format_json if config.format == "json" else text_formatter()
    observer = FileLogObserver(stream, formatter)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[config.level])
    return FilteringLogObserver(observer, [predicate])

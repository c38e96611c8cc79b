"""
Log observers for ``logging.format`` / ``logging.level`` / ``logging.file``, and the access
log: one line per request, either a twisted.logger event (when twistd's own observer writes
the log) or formatted by the proxy and written in batches (:class:`BufferedAccessLog`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from yatagarasu.config.paths import cannot_append
from yatagarasu.config.schema import LoggingConfig
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAccessEntry, IAccessLog
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


def check_log_file(config: LoggingConfig) -> None:
    """
    Check that ``logging.file`` can be opened for appending, without opening it: the observer
    opens it once, at start-up (a reload does not change ``logging``, so it does not check).

    :param config: the ``logging`` section.
    :raises ConfigError: naming ``logging.file``, when the open would fail.
    """
    if config.file:
        problem = cannot_append(config.file)
        if problem is not None:
            raise ConfigError("logging.file", problem)


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


#: the access log's namespace (its level is always info)
ACCESS_NAMESPACE = "yatagarasu.access"
#: access lines held before they are written (nginx's ``access_log ... buffer=``; about
#: 50 KiB of text)
ACCESS_BUFFER_LINES = 512
#: seconds a held access line waits at most before it is written (nginx's ``flush=``)
ACCESS_FLUSH_SECONDS = 1.0

log = Logger()


@implementer(IAccessLog)
class LoggerAccessLog:
    """
    The access log as one twisted.logger event per request (namespace ``yatagarasu.access``,
    level info), for when twistd's own observer writes the log (``--logfile``, ``--syslog``,
    standard output): the ``logging`` section left at its defaults, in a single process.
    """

    def __init__(self) -> None:
        self._log = Logger(namespace=ACCESS_NAMESPACE)

    def write(self, when: float, entry: IAccessEntry) -> None:
        self._log.info(entry.template, **entry.fields())

    def flush(self) -> None:
        """Nothing is held back."""


@implementer(IAccessLog)
class BufferedAccessLog(Service):
    """
    The access log formatted by the proxy and written in batches, for when the proxy's own
    observer writes the log (:func:`make_observer`: ``logging.file``, ``format`` or ``level``
    set, or a worker process), or when twistd's own observer writes to standard output
    (:func:`build_access_log`).

    Each line is what that observer would write for the access event (the same text line or
    JSON object). Lines are held until ``buffer_lines`` wait, ``flush_seconds`` after the
    first one arrived, or :meth:`flush` (a reload, ``stopService`` after the SIGTERM drain);
    each batch is one write. While the service is not running, each line is written at once:
    no line is held at exit.

    A text line is held as the entry's message values and made when its batch is written:
    all of a batch's lines in one loop, which costs a request less than making its line
    while it ends (the line-making code runs warm, and nothing of the request is kept).

    :param clock: the timer for the interval flush.
    :param config: the ``logging`` section (``format`` and ``file``).
    :param worker: the worker number in a worker process (text lines and JSON objects carry
        it, as the observer's other lines do).
    :param stream: where to write (default: ``logging.file`` opened for appending at the
        first write, else standard output as it is when the log is built).
    :param buffer_lines: lines held at most.
    :param flush_seconds: seconds a line is held at most.
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: LoggingConfig,
        worker: int | None = None,
        stream: IO[str] | None = None,
        buffer_lines: int = ACCESS_BUFFER_LINES,
        flush_seconds: float = ACCESS_FLUSH_SECONDS,
    ) -> None:
        self._clock = clock
        self._file = config.file or ""
        # standard output as it is now: twistd redirects sys.stdout into the log later
        self._stream = stream if stream is not None or config.file else sys.stdout
        self._opened: IO[str] | None = None
        self._worker = worker
        self._buffer_lines = buffer_lines
        self._flush_seconds = flush_seconds
        self._json = config.format == "json"
        system = ACCESS_NAMESPACE + "#info"
        self._system = f" [{system}] " if worker is None else f" [{system} worker {worker}] "
        self._stamps = PerSecond(formatTime)
        #: JSON lines, or ``(when, format_message, message_values)`` of text lines
        self._held: list[Any] = []
        self._timer: IDelayedCall | None = None

    def write(self, when: float, entry: IAccessEntry) -> None:
        if self._json:
            event = entry.fields()
            event["log_namespace"] = ACCESS_NAMESPACE
            event["log_format"] = entry.template
            event["log_time"] = when
            if self._worker is not None:
                event["worker"] = self._worker
            event["log_level"] = LogLevel.info
            self._held.append(format_json(event))  # the observer's own JSON line for it
        else:
            self._held.append((when, entry.format_message, entry.message_values()))
        if len(self._held) >= self._buffer_lines or not self.running:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._flush_seconds, self._flush_timer)

    def _flush_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every held line now, in one write."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._held:
            return
        held, self._held = self._held, []
        batch = "".join(held) if self._json else self._text(held)
        try:
            self._write(batch)
        except (OSError, ValueError):
            log.failure("access log: {lines} line(s) could not be written", lines=len(held))

    def _text(self, held: list[tuple[float, Callable[[Any], str], Any]]) -> str:
        """:returns: the text lines of held entries, as the observer writes them."""
        stamps, system = self._stamps, self._system
        lines = []
        for when, format_message, values in held:
            text = format_message(values)
            if "\n" in text:
                text = text.replace("\n", "\n\t")
            lines.append(f"{stamps(when)}{system}{text}\n")
        return "".join(lines)

    def _write(self, batch: str) -> None:
        if self._stream is not None:
            stream = self._stream
        elif self._opened is not None:
            stream = self._opened
        elif self.running:
            stream = self._opened = open(self._file, "a", encoding="utf-8")  # noqa: SIM115
        else:  # before the start or after the stop: no file left open
            with open(self._file, "a", encoding="utf-8") as once:
                once.write(batch)
            return
        stream.write(batch)
        stream.flush()

    def stopService(self) -> None:
        """After the drain: write what is held (and, from now on, each line at once)."""
        super().stopService()
        self.flush()
        if self._opened is not None:
            self._opened.close()
            self._opened = None


def build_access_log(
    config: LoggingConfig,
    clock: IReactorTime,
    worker: int | None = None,
    twistd_stdout: bool = False,
) -> IAccessLog:
    """
    :param config: the ``logging`` section.
    :param clock: the timer of a buffered log.
    :param worker: the worker number in a worker process.
    :param twistd_stdout: whether twistd's own observer writes to standard output (``-n``
        without ``--logfile``, ``--syslog`` or ``--logger``): its text lines are the ones a
        buffered log writes there.
    :returns: a :class:`BufferedAccessLog` where the proxy's own observer writes the log or
        twistd's writes to standard output, else (twistd's observer to its log file or
        syslog: the section at its defaults, one process) a :class:`LoggerAccessLog`.
    """
    if worker is None and is_default(config) and not twistd_stdout:
        return LoggerAccessLog()
    return BufferedAccessLog(clock, config, worker)

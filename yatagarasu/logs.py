"""Log observers for ``logging.format`` / ``logging.level`` / ``logging.file``."""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

from yatagarasu.config.schema import LoggingConfig

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


def make_observer(config: LoggingConfig, stream: IO[str] | None = None) -> ILogObserver:
    """
    Build the log observer the configuration asks for.

    :param config: the ``logging`` section.
    :param stream: where to write (default: ``logging.file`` opened for appending, else stdout).
    :returns: an observer writing JSON lines or text, dropping events below ``level``.
    """
    if stream is None:
        stream = open(config.file, "a", encoding="utf-8") if config.file else sys.stdout  # noqa: SIM115
    observer = (
        jsonFileLogObserver(stream) if config.format == "json" else textFileLogObserver(stream)
    )
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[config.level])
    return FilteringLogObserver(observer, [predicate])

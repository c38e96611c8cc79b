"""Log lines: the text and JSON formatters behind ``logging.format``."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from yatagarasu.config.schema import LoggingConfig
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAccessEntry, IAccessLog
from yatagarasu.logs import (
    ACCESS_NAMESPACE,
    BufferedAccessLog,
    LoggerAccessLog,
    build_access_log,
    check_log_file,
    format_json,
    make_observer,
    text_formatter,
    with_fields,
)

WHEN = 1_800_000_000.25


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "log_format": "{client_ip} {method} {status}",
        "log_level": LogLevel.info,
        "log_namespace": "yatagarasu.access",
        "log_time": WHEN,
        "log_logger": object(),
        "log_source": None,
        "client_ip": "127.0.0.1",
        "method": "GET",
        "status": 200,
    }
    base.update(fields)
    return base


def test_text_lines_match_twisteds_classic_format() -> None:
    fmt = text_formatter()
    for sample in (
        event(),
        event(log_format="two\nlines {status!r}"),
        event(log_format="{obj.real} {items[0]}", obj=3, items=["a"]),
        event(log_level=LogLevel.warn, log_namespace="yatagarasu.s3"),
    ):
        assert fmt(sample) == formatEventAsClassicLogText(sample), sample["log_format"]


def test_text_falls_back_to_twisteds_formatter_for_what_only_it_understands() -> None:
    class Thing:
        def describe(self) -> str:
            return "called"

    fmt = text_formatter()
    calls = event(log_format="{thing.describe()}", thing=Thing())
    assert "called" in fmt(calls)
    missing = event(log_format="{nowhere}")
    assert "Unable to format event" in fmt(missing)
    assert fmt(event(log_format=None)) is None
    try:
        raise ValueError("boom")
    except ValueError:
        failed = event(log_format="it failed", log_failure=Failure())
    text = fmt(failed)
    assert text is not None and "it failed" in text and "ValueError: boom" in text


def test_text_time_is_formatted_once_a_second_and_follows_the_events() -> None:
    fmt = text_formatter()
    first = fmt(event())
    later = fmt(event(log_time=WHEN + 0.5))
    next_second = fmt(event(log_time=WHEN + 1))
    assert first is not None and later is not None and next_second is not None
    assert first.split(" ")[0] == later.split(" ")[0] != next_second.split(" ")[0]


def test_json_lines_carry_every_data_field_and_the_text() -> None:
    line = format_json(event(path=b"/p\xe9", thing=object(), bucket=None))
    assert line.startswith("\x1e") and line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line[1:])
    assert record["client_ip"] == "127.0.0.1" and record["status"] == 200
    assert record["log_level"] == "info" and record["log_text"] == "127.0.0.1 GET 200"
    assert record["log_namespace"] == "yatagarasu.access" and record["log_time"] == WHEN
    assert record["path"] == "/p\xe9" and record["bucket"] is None
    assert record["thing"].startswith("<object object")
    assert "log_logger" not in record and "log_source" not in record


def test_json_lines_of_failures_carry_the_traceback() -> None:
    try:
        raise KeyError("gone")
    except KeyError:
        record = json.loads(format_json(event(log_failure=Failure()))[1:])
    assert "KeyError" in record["log_failure"] and "gone" in record["log_failure"]


def test_the_observer_filters_by_level_and_writes_the_chosen_format() -> None:
    stream = io.StringIO()
    publisher = LogPublisher(make_observer(LoggingConfig(level="warn", format="json"), stream))
    log = Logger(namespace="yatagarasu.test", observer=publisher)
    log.info("dropped {x}", x=1)
    log.warn("kept {x}", x=2)
    lines = [line for line in stream.getvalue().split("\n") if line]  # (splitlines() splits at RS)
    assert len(lines) == 1
    assert json.loads(lines[0][1:])["log_text"] == "kept 2"


def access_event(when: float, template: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The twisted.logger event ``LoggerAccessLog`` emits for these arguments."""
    return {
        **fields,
        "log_logger": object(),
        "log_level": LogLevel.info,
        "log_namespace": ACCESS_NAMESPACE,
        "log_source": None,
        "log_format": template,
        "log_time": when,
    }


TEMPLATE = "{client_ip} {method} {path} {status}"
FIELDS: dict[str, Any] = {
    "client_ip": "127.0.0.1",
    "method": "GET",
    "path": "/pub/a",
    "status": 200,
    "bucket": None,
    "aborted": False,
}


@implementer(IAccessEntry)
class Entry:
    """An access entry whose text is its template filled in with its fields."""

    def __init__(self, template: str = TEMPLATE) -> None:
        self.template = template
        self.values = dict(FIELDS)

    def fields(self) -> dict[str, Any]:
        return dict(self.values)

    def message_values(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        return self.template, tuple(self.values.items())

    @staticmethod
    def format_message(values: tuple[str, tuple[tuple[str, Any], ...]]) -> str:
        template, fields = values
        return template.format_map(dict(fields))


ENTRY = Entry()


def buffered(
    fmt: str = "text", worker: int | None = None, **kwargs: Any
) -> tuple[BufferedAccessLog, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    access = BufferedAccessLog(clock, LoggingConfig(format=fmt), worker, stream, **kwargs)  # type: ignore[arg-type]
    access.startService()
    return access, stream, clock


def test_both_access_logs_provide_the_interface() -> None:
    assert verifyObject(IAccessLog, LoggerAccessLog())
    assert verifyObject(IAccessLog, buffered()[0])


def test_buffered_lines_are_what_the_observer_writes_for_the_access_event() -> None:
    for fmt, worker in (("text", None), ("text", 3), ("json", None), ("json", 1)):
        access, stream, _ = buffered(fmt, worker)
        access.write(WHEN, ENTRY)
        access.write(WHEN, Entry("two\nlines {status}"))
        access.flush()
        observed = io.StringIO()
        observer = make_observer(LoggingConfig(format=fmt), observed)  # type: ignore[arg-type]
        if worker is not None:
            observer = with_fields(observer, worker=worker)
        observer(access_event(WHEN, TEMPLATE, FIELDS))
        observer(access_event(WHEN, "two\nlines {status}", FIELDS))
        if fmt == "json":
            ours = [json.loads(line) for line in stream.getvalue().split("\x1e") if line]
            theirs = [json.loads(line) for line in observed.getvalue().split("\x1e") if line]
            assert ours == theirs and ours[0]["log_text"] == "127.0.0.1 GET /pub/a 200"
        else:
            assert stream.getvalue() == observed.getvalue()
            assert stream.getvalue().count("\n") == 3  # the second message's line is indented


def test_lines_are_held_until_the_interval_then_written_in_one_write() -> None:
    access, stream, clock = buffered(flush_seconds=1.0)
    writes: list[str] = []
    real_write = stream.write
    stream.write = lambda text: writes.append(text) or real_write(text)  # type: ignore[method-assign]
    for _ in range(3):
        access.write(WHEN, ENTRY)
    assert writes == []
    clock.advance(0.5)
    assert writes == []
    clock.advance(0.5)
    assert len(writes) == 1 and writes[0].count("\n") == 3
    assert clock.getDelayedCalls() == []  # no timer while nothing waits
    access.write(WHEN, ENTRY)
    clock.advance(1.0)
    assert len(writes) == 2 and stream.getvalue().count("\n") == 4


def test_a_full_buffer_is_written_at_once() -> None:
    for fmt in ("text", "json"):
        access, stream, clock = buffered(fmt, buffer_lines=2)
        access.write(WHEN, ENTRY)
        assert stream.getvalue() == ""
        access.write(WHEN, ENTRY)
        assert stream.getvalue().count("127.0.0.1 GET /pub/a 200") == 2
        access.write(WHEN, ENTRY)
        assert stream.getvalue().count("127.0.0.1 GET /pub/a 200") == 2
        clock.advance(1.0)
        assert stream.getvalue().count("127.0.0.1 GET /pub/a 200") == 3


def test_a_held_text_line_is_made_from_the_values_given_at_the_write() -> None:
    access, stream, clock = buffered()
    entry = Entry()
    access.write(WHEN, entry)
    entry.template, entry.values["status"] = "changed {status}", 500  # later: not seen
    clock.advance(1.0)
    assert stream.getvalue().endswith(" 127.0.0.1 GET /pub/a 200\n")


def test_stopping_writes_what_is_held_and_later_lines_at_once() -> None:
    access, stream, clock = buffered()
    access.write(WHEN, ENTRY)
    access.stopService()
    assert stream.getvalue().count("\n") == 1
    assert clock.getDelayedCalls() == []
    access.write(WHEN, ENTRY)
    assert stream.getvalue().count("\n") == 2


def test_the_log_file_is_opened_at_the_first_write(tmp_path: Path) -> None:
    path = tmp_path / "proxy.log"
    access = BufferedAccessLog(Clock(), LoggingConfig(file=str(path)))
    assert not path.exists()
    access.write(WHEN, ENTRY)  # not running: written at once
    assert path.read_text().endswith("127.0.0.1 GET /pub/a 200\n")


def test_the_process_logging_decides_where_access_lines_go() -> None:
    clock = Clock()
    assert isinstance(build_access_log(LoggingConfig(), clock), LoggerAccessLog)
    assert isinstance(build_access_log(LoggingConfig(), clock, worker=0), BufferedAccessLog)
    assert isinstance(build_access_log(LoggingConfig(format="json"), clock), BufferedAccessLog)
    assert isinstance(build_access_log(LoggingConfig(file="x.log"), clock), BufferedAccessLog)
    to_stdout = build_access_log(LoggingConfig(), clock, twistd_stdout=True)
    assert isinstance(to_stdout, BufferedAccessLog) and to_stdout._stream is sys.stdout


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def test_the_logger_access_log_emits_one_event(events: list[LogEvent]) -> None:
    LoggerAccessLog().write(WHEN, ENTRY)
    [event] = [e for e in events if e.get("log_namespace") == ACCESS_NAMESPACE]
    assert event["log_format"] == TEMPLATE and event["status"] == 200


def test_a_log_file_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "proxy.log"
    with pytest.raises(ConfigError) as caught:
        check_log_file(LoggingConfig(file=str(missing)))
    assert caught.value.path == "logging.file"
    assert "its directory" in caught.value.message and "does not exist" in caught.value.message
    with pytest.raises(ConfigError, match="is a directory"):
        check_log_file(LoggingConfig(file=str(tmp_path)))
    check_log_file(LoggingConfig(file=str(tmp_path / "proxy.log")))
    assert not (tmp_path / "proxy.log").exists()  # checked, not created
    check_log_file(LoggingConfig(file=""))  # standard output, as no file
    check_log_file(LoggingConfig())

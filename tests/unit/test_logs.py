"""Log lines: the text and JSON formatters behind ``logging.format``."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.logger import Logger, LogLevel, LogPublisher, formatEventAsClassicLogText
from twisted.python.failure import Failure

from yatagarasu.config.schema import LoggingConfig
from yatagarasu.logs import format_json, make_observer, text_formatter

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

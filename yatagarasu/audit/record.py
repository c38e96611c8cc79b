"""
The audit record as JSON, and the redaction applied before a record reaches any sink:
secret-looking query parameters in a ``Referer``, and the headers an operator lists.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _quote

from yatagarasu.per_second import PerSecond
from yatagarasu.values import AuditRecord

#: what replaces a redacted value
REDACTED = "[REDACTED]"

#: query parameter names that are secrets (case-insensitive, anywhere in the name):
#: ``token``, ``access_token``, ``jwt``, ``X-Amz-Signature``, ``api_key``, ``password``...
SECRET_PARAMETER = re.compile(
    r"token|jwt|secret|passw|pwd|signature|sig$|credential|auth|api[-_]?key|^key$|session",
    re.IGNORECASE,
)

#: headers whose values may be recorded at all (``user_agent``, ``referer``)
RECORDED_HEADERS = ("user-agent", "referer")

_LINE = (
    '{"timestamp":"%s","correlation_id":%s,"client_ip":%s,"user":%s,"bucket":%s,'
    '"object_key":%s,"http_method":%s,"request_path":%s,"response_status":%d,'
    '"response_size_bytes":%d,"duration_ms":%r,"cache_status":%s,"user_agent":%s,'
    '"referer":%s}'
)


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _second(when: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))


def rfc3339(when: float) -> str:
    """
    :param when: epoch seconds.
    :returns: ``2026-12-02T04:10:00.123Z`` (UTC, milliseconds).
    """
    return f"{_second(int(when))}.{int(when * 1000) % 1000:03d}Z"


def to_dict(record: AuditRecord) -> dict[str, object]:
    """
    :param record: a record.
    :returns: exactly the DESIGN.md §3 fields, in that order (``timestamp`` first), plus
        ``trace_id`` when the request was traced: what a sink that does not write JSON lines
        (a database, a message queue) stores.
    """
    return {
        "timestamp": rfc3339(record.started),
        "correlation_id": record.correlation_id,
        "client_ip": record.client_ip,
        "user": record.user,
        "bucket": record.bucket,
        "object_key": record.object_key,
        "http_method": record.http_method,
        "request_path": record.request_path,
        "response_status": record.response_status,
        "response_size_bytes": record.response_size_bytes,
        "duration_ms": record.duration_ms,
        "cache_status": record.cache_status,
        "user_agent": record.user_agent,
        "referer": record.referer,
        **({} if record.trace_id is None else {"trace_id": record.trace_id}),
    }


class JsonEncoder:
    """
    Records as JSON lines: the :func:`to_dict` object, written by a template with the
    standard library's C string escaper (non-ASCII as ``\\uXXXX``, so no character of a
    value can split the line for any reader) (about four times faster than ``json.dumps`` of the
    dict, which matters at thousands of records a second), the timestamp's seconds made once
    a second. One encoder per thread: the per-second cache is not shared.
    """

    def __init__(self) -> None:
        self._seconds = PerSecond(_second)

    def timestamp(self, when: float) -> str:
        """:returns: :func:`rfc3339` of ``when``, from the per-second cache."""
        return f"{self._seconds(when)}.{int(when * 1000) % 1000:03d}Z"

    def __call__(self, record: AuditRecord) -> str:
        """
        :param record: a record.
        :returns: one JSON object on one line (no newline at the end); control characters
            and quotes in header values are escaped, so a value cannot start a new line.
            ``trace_id`` comes last, only when the request was traced.
        """
        line = _LINE % (
            self.timestamp(record.started),
            _quote(record.correlation_id),
            _quote(record.client_ip),
            _text(record.user),
            _text(record.bucket),
            _text(record.object_key),
            _quote(record.http_method),
            _quote(record.request_path),
            record.response_status,
            record.response_size_bytes,
            float(record.duration_ms),
            _text(record.cache_status),
            _text(record.user_agent),
            _text(record.referer),
        )
        if record.trace_id is None:
            return line
        return f'{line[:-1]},"trace_id":{_quote(record.trace_id)}}}'


def to_json(record: AuditRecord) -> str:
    """
    :param record: a record.
    :returns: its JSON line (see :class:`JsonEncoder`; use one of those in a loop).
    """
    return JsonEncoder()(record)


def redact_query(url: str) -> str:
    """
    Replace the values of secret-looking query parameters (:data:`SECRET_PARAMETER`).

    :param url: a URL or a path with a query string.
    :returns: the same text with those values replaced by ``[REDACTED]`` (the fragment is
        dropped: it is never sent to servers and may carry tokens in OAuth flows).
    """
    url = url.split("#", 1)[0]
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        if eq and SECRET_PARAMETER.search(name):
            part = f"{name}={REDACTED}"
        elif not eq and SECRET_PARAMETER.search(name):
            part = name
        parts.append(part)
    return f"{base}?{'&'.join(parts)}"


class Redaction:
    """
    What is removed from a record before sinks see it.

    :param sensitive_headers: header names (case-insensitive) whose values never appear;
        of the headers a record carries, ``user-agent`` and ``referer`` may be listed.
    """

    def __init__(self, sensitive_headers: Iterable[str] = ()) -> None:
        names = {name.lower() for name in sensitive_headers}
        self.user_agent = "user-agent" in names
        self.referer = "referer" in names

    def apply(self, record: AuditRecord) -> None:
        """
        Redact ``record`` in place.

        :param record: a record built from the request.
        """
        if record.user_agent is not None and self.user_agent:
            record.user_agent = REDACTED
        if record.referer is not None:
            record.referer = REDACTED if self.referer else redact_query(record.referer)

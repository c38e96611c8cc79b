"""
The audit record as JSON, and the redaction applied before a record reaches any sink or a log
line: secret-looking query parameters (in a ``Referer``, in a logged request target), secret
headers, and the headers an operator lists.
"""

from __future__ import annotations

import re
import time
from collections.abc import Container, Iterable
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

#: headers whose values are secrets whatever the configuration lists (besides the names
#: :data:`SECRET_PARAMETER` matches: ``x-auth-token``, ``x-api-key``...)
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

#: headers whose values are URLs, which may carry secret query parameters
_URL_HEADERS = frozenset({"referer", "location", "content-location"})

_LINE = (
    '{"timestamp":"%s.%03dZ","correlation_id":%s,"client_ip":%s,"user":%s,"bucket":%s,'
    '"object_key":%s,"http_method":%s,"request_path":%s,"response_status":%d,'
    '"response_size_bytes":%d,"duration_ms":%r,"cache_status":%s,"user_agent":%s,'
    '"referer":%s}'
)


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
    :returns: exactly the DESIGN.md §3 fields, in that order (``timestamp`` first): what a
        sink that does not write JSON lines (a database, a message queue) stores.
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
        """
        # The optional fields' ``null`` is written inline: a helper call per field costs more
        # than the escaping (this runs once per request).
        when = record.started
        user, bucket, key = record.user, record.bucket, record.object_key
        cache, agent, referer = record.cache_status, record.user_agent, record.referer
        return _LINE % (
            self._seconds(when),
            int(when * 1000) % 1000,
            _quote(record.correlation_id),
            _quote(record.client_ip),
            "null" if user is None else _quote(user),
            "null" if bucket is None else _quote(bucket),
            "null" if key is None else _quote(key),
            _quote(record.http_method),
            _quote(record.request_path),
            record.response_status,
            record.response_size_bytes,
            float(record.duration_ms),
            "null" if cache is None else _quote(cache),
            "null" if agent is None else _quote(agent),
            "null" if referer is None else _quote(referer),
        )


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


def redact_header(name: str, value: str, sensitive: Container[str] = ()) -> str:
    """
    The one decision of what a header value may show, for audit records and log lines.

    :param name: the header name, lowercase.
    :param value: its value.
    :param sensitive: further names (lowercase) an operator lists.
    :returns: ``[REDACTED]`` for :data:`SECRET_HEADERS`, names :data:`SECRET_PARAMETER`
        matches and ``sensitive`` names; a URL header with :func:`redact_query` applied;
        else the value.
    """
    if name in SECRET_HEADERS or name in sensitive or SECRET_PARAMETER.search(name):
        return REDACTED
    if name in _URL_HEADERS:
        return redact_query(value)
    return value


class Redaction:
    """
    What is removed from a record before sinks see it.

    :param sensitive_headers: header names (case-insensitive) whose values never appear;
        of the headers a record carries, ``user-agent`` and ``referer`` may be listed.
    """

    def __init__(self, sensitive_headers: Iterable[str] = ()) -> None:
        names = {name.lower() for name in sensitive_headers}
        # decided once by redact_header, not per record
        self.user_agent = redact_header("user-agent", "", names) == REDACTED
        self.referer = redact_header("referer", "", names) == REDACTED

    def apply(self, record: AuditRecord) -> None:
        """
        Redact ``record`` in place.

        :param record: a record built from the request.
        """
        if record.user_agent is not None and self.user_agent:
            record.user_agent = REDACTED
        if record.referer is not None:
            record.referer = REDACTED if self.referer else redact_query(record.referer)

"""
The audit record as JSON, and the redaction applied before a record reaches any sink:
secret-looking query parameters in a ``Referer``, and the headers an operator lists.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable

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

_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode


def rfc3339(when: float) -> str:
    """
    :param when: epoch seconds.
    :returns: ``2026-12-02T04:10:00.123Z`` (UTC, milliseconds).
    """
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return f"{seconds}.{int(when * 1000) % 1000:03d}Z"


def to_dict(record: AuditRecord) -> dict[str, object]:
    """
    :param record: a record.
    :returns: exactly the DESIGN.md §3 fields, in that order (``timestamp`` first).
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


def to_json(record: AuditRecord) -> str:
    """
    :param record: a record.
    :returns: one JSON object on one line (no newline at the end); control characters and
        quotes in header values are escaped, so a value cannot start a new line.
    """
    return _encode(to_dict(record))


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

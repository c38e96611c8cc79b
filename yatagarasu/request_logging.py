"""
``observability.request_logging``: which requests the access log shows (path patterns, status
codes) and what it adds to them (the request's arrival with its headers, the response's
headers), every header and query value passed through the audit trail's redaction first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate

from yatagarasu.audit.record import redact_header, redact_query
from yatagarasu.config.schema import RequestLoggingConfig


def _any_of(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """:returns: one regular expression matching a whole path that matches any pattern."""
    expressions = [translate(pattern) for pattern in patterns]
    return re.compile("|".join(f"(?:{e})" for e in expressions)) if expressions else None


class RequestLogPolicy:
    """
    The compiled ``request_logging`` section.

    :param config: the section.
    :ivar log_requests: whether an event is written when a request arrives.
    :ivar log_responses: whether the access-log event carries the response's headers.
    """

    def __init__(self, config: RequestLoggingConfig) -> None:
        self.log_requests = config.log_requests
        self.log_responses = config.log_responses
        self._include = _any_of(config.include_paths)
        self._exclude = _any_of(config.exclude_paths)
        self._statuses = frozenset(config.status_codes)
        self._sensitive = frozenset(name.lower() for name in config.redact_headers)

    @classmethod
    def build(cls, config: RequestLoggingConfig) -> RequestLogPolicy | None:
        """
        :param config: the section.
        :returns: its policy, or ``None`` when it changes nothing (no filter, nothing added):
            the access log then costs what it did without the section.
        """
        if not (
            config.log_requests
            or config.log_responses
            or config.include_paths
            or config.exclude_paths
            or config.status_codes
        ):
            return None
        return cls(config)

    def path_wanted(self, path: str) -> bool:
        """
        :param path: the request path, without its query string.
        :returns: whether it is logged: not excluded, and included (every path when no
            ``include_paths`` are given).
        """
        if self._exclude is not None and self._exclude.match(path):
            return False
        return self._include is None or self._include.match(path) is not None

    def response_wanted(self, path: str, status: int) -> bool:
        """
        :param path: the request path, without its query string.
        :param status: the status sent.
        :returns: whether its access-log event is written.
        """
        if self._statuses and status not in self._statuses:
            return False
        return self.path_wanted(path)

    def headers(self, pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """
        :param pairs: ``(name, value)`` of each header line.
        :returns: ``{lowercase name: value}``, repeated headers joined with ``", "``, each value
            redacted (:func:`yatagarasu.audit.record.redact_header`).
        """
        shown: dict[str, str] = {}
        for raw_name, raw_value in pairs:
            name = raw_name.decode("latin-1").lower()
            value = redact_header(name, raw_value.decode("latin-1"), self._sensitive)
            shown[name] = f"{shown[name]}, {value}" if name in shown else value
        return shown

    def user_agent(self, value: str) -> str:
        """:returns: the access log's ``user_agent`` field (redacted when listed)."""
        return redact_header("user-agent", value, self._sensitive)

    @staticmethod
    def target(uri: bytes) -> str:
        """
        :param uri: the raw request target.
        :returns: it as text, secret-looking query parameters redacted.
        """
        return redact_query(uri.decode("utf-8", "replace"))

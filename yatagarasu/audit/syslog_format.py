"""
RFC 5424 syslog messages for audit records, and RFC 6587 octet-counting framing for TCP/TLS.

A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG``: ``PRI`` is
``facility * 8 + severity``, the severity comes from the status class (below 400:
informational, 4xx: warning, 5xx: error), ``MSGID`` is ``audit``, the structured data element
``[audit@32473 correlation_id="..." status="..."]`` lets a collector index without parsing the
JSON, and ``MSG`` is the record as JSON (:class:`yatagarasu.audit.record.JsonEncoder`).
"""

from __future__ import annotations

from yatagarasu.audit.record import JsonEncoder
from yatagarasu.values import AuditRecord

#: RFC 5424 §6.2.1 facility names
FACILITIES = {
    name: code
    for code, name in enumerate(
        [
            "kern",
            "user",
            "mail",
            "daemon",
            "auth",
            "syslog",
            "lpr",
            "news",
            "uucp",
            "cron",
            "authpriv",
            "ftp",
            "ntp",
            "audit",
            "alert",
            "clock",
            "local0",
            "local1",
            "local2",
            "local3",
            "local4",
            "local5",
            "local6",
            "local7",
        ]
    )
}
INFORMATIONAL, WARNING, ERROR = 6, 4, 3
#: the structured data id (32473: the enterprise number RFC 5612 reserves for examples)
SD_ID = "audit@32473"


def severity(status: int) -> int:
    """
    :param status: the response status.
    :returns: the syslog severity of its class.
    """
    if status >= 500:
        return ERROR
    if status >= 400:
        return WARNING
    return INFORMATIONAL


def _header_field(value: str, limit: int) -> str:
    """A HOSTNAME/APP-NAME/PROCID: printable US-ASCII without spaces, or ``-``."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _param(value: str) -> str:
    """An SD-PARAM value: ``"``, ``\\`` and ``]`` escaped (RFC 5424 §6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class SyslogFormatter:
    """
    :param facility: the facility code (0-23).
    :param hostname: the HOSTNAME field.
    :param app_name: the APP-NAME field.
    :param procid: the PROCID field (the process id).
    """

    def __init__(self, facility: int, hostname: str, app_name: str, procid: str) -> None:
        self._facility = facility
        self._encode = JsonEncoder()
        self._head = (
            f"{_header_field(hostname, 255)} {_header_field(app_name, 48)}"
            f" {_header_field(procid, 128)} audit"
        )

    def message(self, record: AuditRecord) -> bytes:
        """
        :param record: the record.
        :returns: the RFC 5424 message (UTF-8, no trailing newline).
        """
        pri = self._facility * 8 + severity(record.response_status)
        sd = (
            f'[{SD_ID} correlation_id="{_param(record.correlation_id)}"'
            f' status="{record.response_status}"]'
        )
        stamp = self._encode.timestamp(record.started)
        text = f"<{pri}>1 {stamp} {self._head} {sd} {self._encode(record)}"
        return text.encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """
    :param message: one syslog message.
    :returns: it framed for a stream (RFC 6587 §3.4.1): ``<length> <message>``.
    """
    return b"%d %s" % (len(message), message)

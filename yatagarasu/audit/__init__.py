"""
The audit trail: one record per request (DESIGN.md §3), redacted, fanned out to the sinks
``audit_log.outputs`` names (plugins: :class:`yatagarasu.interfaces.IAuditSinkFactory`). The
built-in sinks are ``file`` (JSON lines with rotation) and ``syslog`` (RFC 5424).
"""

"""Plugin dropin: the built-in ``syslog`` audit sink (``audit_log.outputs: [syslog]``)."""

from yatagarasu.audit.syslog import SyslogSinkFactory

syslog = SyslogSinkFactory()

"""Plugin dropin: the built-in ``file`` audit sink (``audit_log.outputs: [file]``)."""

from yatagarasu.audit.file import FileSinkFactory

file = FileSinkFactory()

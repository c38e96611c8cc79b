"""
Plugin dropin: the built-in ``s3`` audit sink (``audit_log.outputs: [s3]``, settings in
``audit_log.s3_export``). The sink (:mod:`yatagarasu.audit.s3_export`) is given its uploads
here, where both the audit and the S3 layers are below: a signed PUT of our own S3 client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import IPlugin
from twisted.web.http_headers import Headers
from zope.interface import implementer

from yatagarasu.audit.file import thread_runner
from yatagarasu.audit.s3_export import S3ExportSettings, S3Sink
from yatagarasu.config.typed import from_raw
from yatagarasu.interfaces import IAuditSinkFactory
from yatagarasu.s3.client import S3Client


@implementer(IPlugin, IAuditSinkFactory)
class S3SinkFactory:
    """The ``s3`` sink's plugin factory."""

    name = "s3"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> S3Sink:
        parsed = from_raw(S3ExportSettings, settings, path)
        client = S3Client(reactor, parsed.s3_config())
        kind = b"application/gzip" if parsed.compress else b"application/x-ndjson"
        headers = Headers({b"content-type": [kind]})

        async def put(key: str, body: bytes, digest: str) -> tuple[int, str | None]:
            return await client.put(key, body, headers, digest)

        return S3Sink(parsed, reactor, thread_runner(reactor), put, client.close)


s3 = S3SinkFactory()

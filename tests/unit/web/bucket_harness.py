"""The in-memory proxy harness the web unit tests share: buckets on fake S3 agents."""

from __future__ import annotations

from tests.unit.fakes import Harness, bucket_entry


def harness(*buckets: dict[str, object], **top: object) -> Harness:
    return Harness({"buckets": list(buckets) or [bucket_entry()], **top})


OBJECT_HEADERS = {
    "Content-Type": "text/plain",
    "ETag": '"abc123"',
    "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT",
    "Cache-Control": "max-age=60",
    "Accept-Ranges": "bytes",
    "x-amz-request-id": "SECRET-ID",
    "x-amz-meta-owner": "someone",
    "Server": "AmazonS3",
}

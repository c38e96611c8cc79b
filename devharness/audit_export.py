"""
The ``s3`` audit sink against moto: its ``audit_log.s3_export`` section, and what it exported
(object names, records), read back with boto3. Used by the integration tests and the no-loss
bench.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from devharness.moto_s3 import MotoS3Server


def s3_export_section(
    moto: MotoS3Server, bucket: str, spool_dir: Path, **extra: Any
) -> dict[str, Any]:
    """
    :param moto: where batches go.
    :param bucket: the S3 bucket they go to.
    :param spool_dir: the sink's local spool.
    :param extra: further ``audit_log.s3_export`` keys.
    :returns: the section, signed with moto's IAM user key.
    """
    section: dict[str, Any] = {
        "bucket": bucket,
        "region": moto.region,
        "endpoint": moto.endpoint_url,
        "access_key": moto.access_key,
        "secret_key": moto.secret_key,
        "spool_dir": str(spool_dir),
        "instance": "it",
        "path_prefix": "audit/",
        "export_interval_seconds": 1,
        "retry_initial_backoff_seconds": 0.2,
        "retry_max_backoff_seconds": 1,
    }
    section.update(extra)
    return section


def exported_objects(moto: MotoS3Server, bucket: str) -> dict[str, list[dict[str, Any]]]:
    """
    :param moto: the S3 server.
    :param bucket: the bucket batches went to.
    :returns: every object's key and its records (``.gz`` objects decompressed).
    """
    objects: dict[str, list[dict[str, Any]]] = {}
    token: dict[str, str] = {}
    for _ in range(10_000):
        page = moto.s3.list_objects_v2(Bucket=bucket, **token)
        for item in page.get("Contents", []):
            key = str(item["Key"])
            body = moto.get_object(bucket, key)
            text = gzip.decompress(body) if key.endswith(".gz") else body
            objects[key] = [json.loads(line) for line in text.decode().splitlines()]
        if not page.get("IsTruncated"):
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}
    return objects


def exported_ids(moto: MotoS3Server, bucket: str) -> list[str]:
    """
    :param moto: the S3 server.
    :param bucket: the bucket batches went to.
    :returns: the correlation id of every exported record (duplicates kept).
    """
    return [
        record["correlation_id"]
        for records in exported_objects(moto, bucket).values()
        for record in records
    ]

"""Proxy config dicts pointing at a moto server, and writing them as YAML."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK


def bucket_config(
    moto: MotoS3Server,
    name: str,
    bucket: str,
    *,
    path_prefix: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """
    One ``buckets[]`` entry pointing at ``moto``.

    :param moto: the S3 server.
    :param name: bucket name used in URLs/logs/metrics.
    :param bucket: the S3 bucket name.
    :param path_prefix: URL prefix, default ``/<name>``.
    :param extra: further bucket keys (``auth``, ``cache``, ``cors``…), merged in.
    :returns: the entry as a dict.
    """
    entry: dict[str, Any] = {
        "name": name,
        "path_prefix": path_prefix if path_prefix is not None else f"/{name}",
        "s3": {
            "bucket": bucket,
            "region": moto.region,
            "endpoint": moto.endpoint_url,
            "access_key": moto.access_key,
            "secret_key": moto.secret_key,
        },
    }
    entry.update(extra)
    return entry


def proxy_config(
    moto: MotoS3Server,
    buckets: Mapping[str, str] | Sequence[Mapping[str, Any]],
    *,
    port: int = 0,
    address: str = LOOPBACK,
    **top_level: Any,
) -> dict[str, Any]:
    """
    A proxy config dict pointing at ``moto``.

    :param moto: the S3 server.
    :param buckets: either ``{name: s3_bucket}`` (prefix ``/<name>``) or ready ``buckets[]``
        entries (see :func:`bucket_config`).
    :param port: listening port; ``0`` lets :func:`start_proxy` pick a free one.
    :param address: listening address.
    :param top_level: further top-level keys (``cache``, ``jwt``, ``audit_log``…).
    :returns: the config dict (dump it with :func:`write_config`).
    """
    if isinstance(buckets, Mapping):
        entries = [bucket_config(moto, name, bucket) for name, bucket in buckets.items()]
    else:
        entries = [dict(entry) for entry in buckets]
    config: dict[str, Any] = {
        "server": {"address": address, "port": port},
        "buckets": entries,
    }
    config.update(top_level)
    return config


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """
    :param config: config dict.
    :param path: YAML file to write.
    :returns: ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False))
    return path

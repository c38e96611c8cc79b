"""
The ``twistd yatagarasu`` command: options and ``makeService``.

Everything that can fail because of the configuration (YAML, validation, TLS files) happens in
:meth:`Options.postOptions`, before twistd listens or daemonizes: a bad configuration prints
one line naming the dotted key path and exits with status 1.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from twisted.application.service import IService
from twisted.python import usage

from yatagarasu.components import Components, build_components
from yatagarasu.config import ConfigError, load_config


class Options(usage.Options):
    """Command-line options of ``twistd yatagarasu``."""

    synopsis = "--config PATH [--check]"
    longdesc = "Serve S3 buckets over HTTP: a read-only, caching, authenticating proxy."
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "Path to the YAML configuration file (required)."],
    ]
    optFlags: ClassVar[list[list[str | None]]] = [
        ["check", None, "Load and validate the configuration, print a summary and exit."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("--config PATH is required")
        # The one place that touches the global reactor: twistd has chosen it by now (its
        # --reactor option comes first), and everything below receives it as a parameter.
        from twisted.internet import reactor

        try:
            components = build_components(load_config(path), reactor)
        except ConfigError as e:
            sys.stderr.write(f"yatagarasu: invalid configuration {path}: {e}\n")
            raise SystemExit(1) from None
        if self["check"]:
            sys.stdout.write(summary(path, components))
            raise SystemExit(0)
        self["components"] = components
        self["reactor"] = reactor


def summary(path: str, components: Components) -> str:
    """
    Describe a valid configuration in a few lines (for ``--check``).

    :param path: the file it came from.
    :param components: what was built from it.
    :returns: the text to print.
    """
    config, access, caching = components.config, components.access, components.caching
    server = config.server
    scheme = "https" if server.tls else "http"
    lines = [
        f"configuration OK: {path}",
        f"listener: {scheme}://{server.host}:{server.listen_port}",
        f"buckets: {len(config.buckets)}",
    ]
    for bucket in config.buckets:
        endpoint = bucket.s3.endpoint or f"AWS {bucket.s3.region}"
        auth_scheme = access.schemes.get(bucket.name)
        extras = [f"auth: {auth_scheme.name}" if auth_scheme is not None else "public"]
        if bucket.name in access.ip_filters:
            extras.append("ip filter")
        if bucket.name in caching.policies:
            extras.append("cached")
        lines.append(
            f"  {bucket.path_prefix} -> s3://{bucket.s3.bucket} ({endpoint}) "
            f"[{bucket.name}; {', '.join(extras)}]"
        )
    if caching.cache is not None:
        lines.append("cache layers: " + ", ".join(layer.name for layer in caching.cache.layers))
    lines.append(f"admin API: {'jwt with admin_claims' if access.admin else 'disabled (403)'}")
    return "\n".join(lines) + "\n"


def makeService(options: Options) -> IService:
    """
    Build the root service from parsed options.

    :param options: parsed (and validated) options.
    :returns: the root ``MultiService``.
    """
    from yatagarasu.service import ProxyService

    return ProxyService(options["reactor"], options["components"])

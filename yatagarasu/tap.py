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
from twisted.internet.ssl import CertificateOptions
from twisted.python import usage

from yatagarasu.auth.setup import AccessControl, build_access_control
from yatagarasu.config import Config, ConfigError, load_config
from yatagarasu.tls import server_tls_options


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
            config = load_config(path)
            tls = server_tls_options(config.server.tls) if config.server.tls else None
            access = build_access_control(config, reactor)
        except ConfigError as e:
            sys.stderr.write(f"yatagarasu: invalid configuration {path}: {e}\n")
            raise SystemExit(1) from None
        if self["check"]:
            sys.stdout.write(summary(path, config, access))
            raise SystemExit(0)
        self["loaded"] = config
        self["tls"] = tls
        self["access"] = access
        self["reactor"] = reactor


def summary(path: str, config: Config, access: AccessControl) -> str:
    """
    Describe a valid configuration in a few lines (for ``--check``).

    :param path: the file it came from.
    :param config: the configuration.
    :param access: the auth schemes and filters built from it.
    :returns: the text to print.
    """
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
        lines.append(
            f"  {bucket.path_prefix} -> s3://{bucket.s3.bucket} ({endpoint}) "
            f"[{bucket.name}; {', '.join(extras)}]"
        )
    lines.append(f"admin API: {'jwt with admin_claims' if access.admin else 'disabled (403)'}")
    return "\n".join(lines) + "\n"


def makeService(options: Options) -> IService:
    """
    Build the root service from parsed options.

    :param options: parsed (and validated) options.
    :returns: the root ``MultiService``.
    """
    from yatagarasu.service import ProxyService

    config: Config = options["loaded"]
    tls: CertificateOptions | None = options["tls"]
    access: AccessControl = options["access"]
    return ProxyService(options["reactor"], config, access, tls)

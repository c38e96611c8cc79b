"""
The ``audit_log`` section: whether records are written, to which sinks, and what is redacted.
Each sink's section (``audit_log.file``, ``audit_log.syslog``, or a third-party sink's
``audit_log.<name>``) is validated by the sink's own plugin factory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

from yatagarasu.audit.record import Redaction
from yatagarasu.audit.trail import AuditTrail
from yatagarasu.config.schema import Config
from yatagarasu.config.typed import from_raw_beside, join
from yatagarasu.discovery import available, find
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink, IAuditSinkFactory

_S3_LATER = "S3 export of audit records is not built yet; use the file or syslog output"


@dataclass(frozen=True)
class AuditSettings:
    """The ``audit_log`` keys other than sink sections."""

    UNSUPPORTED: ClassVar[dict[str, str]] = {"s3_export": _S3_LATER, "s3": _S3_LATER}

    enabled: bool = False
    outputs: tuple[str, ...] = field(default=(), metadata={"aliases": ("output",)})
    redact_headers: tuple[str, ...] = ()
    skip_probes: bool = False

    def check(self, path: str) -> None:
        if self.enabled and not self.outputs:
            raise ConfigError(join(path, "outputs"), "at least one output when enabled")
        seen: set[str] = set()
        for i, name in enumerate(self.outputs):
            where = f"{join(path, 'outputs')}[{i}]"
            if name in ("s3", "s3_export"):
                raise ConfigError(where, f"not supported yet ({_S3_LATER})")
            if name in seen:
                raise ConfigError(where, f"{name!r} listed twice")
            seen.add(name)


def build_audit(config: Config, reactor: Any, plugins: ModuleType) -> AuditTrail | None:
    """
    :param config: the validated configuration.
    :param reactor: time, threads, TCP/UDP.
    :param plugins: the plugin package audit sinks are found in.
    :returns: the trail, or ``None`` when ``audit_log.enabled`` is not true (the sections
        are validated all the same); nothing is opened or connected yet.
    :raises ConfigError: bad settings, an unknown sink, a section of a sink not listed in
        ``audit_log.outputs``.
    """
    raw: Mapping[str, Any] = config.audit_log or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("audit_log", "expected a mapping")
    factories = available(IAuditSinkFactory, plugins)
    listed = raw.get("outputs", raw.get("output", ()))
    listed_names = set(listed) if isinstance(listed, list | tuple) else set()
    sections = {k: v for k, v in raw.items() if k in factories or k in listed_names}
    settings = _settings({k: v for k, v in raw.items() if k not in sections}, factories)
    for name in sections:
        if name not in settings.outputs:
            raise ConfigError(
                f"audit_log.{name}", f"the {name} sink is configured but not in audit_log.outputs"
            )
    sinks: list[IAuditSink] = []
    for i, name in enumerate(settings.outputs):
        factory = find(IAuditSinkFactory, name, f"audit_log.outputs[{i}]", plugins)
        section = sections.get(name) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"audit_log.{name}", "expected a mapping")
        sinks.append(factory.build(section, f"audit_log.{name}", reactor))
    if not settings.enabled:
        return None
    if "file" in settings.outputs and config.server.workers > 1:
        # Each worker would append to, and rotate, the same file.
        raise ConfigError(
            f"audit_log.outputs[{list(settings.outputs).index('file')}]",
            "the file sink needs server.workers: 1 (one writer per file; not supported yet"
            " with several workers): use the syslog sink, or one worker",
        )
    redaction = Redaction(settings.redact_headers)
    return AuditTrail(sinks, redaction, skip_probes=settings.skip_probes)


def _settings(raw: Mapping[str, Any], factories: Mapping[str, Any]) -> AuditSettings:
    return from_raw_beside(AuditSettings, raw, "audit_log", factories)

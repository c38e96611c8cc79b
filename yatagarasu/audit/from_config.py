"""
The ``audit_log`` section: whether records are written, to which sinks, and what is redacted.
Each sink's section (``audit_log.file``, ``audit_log.syslog``, ``audit_log.s3_export`` for the
``s3`` sink, or a third-party sink's ``audit_log.<name>``) is validated by the sink's own plugin
factory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from yatagarasu.audit.record import Redaction
from yatagarasu.audit.trail import AuditTrail
from yatagarasu.config.schema import Config
from yatagarasu.config.typed import from_raw_beside, join
from yatagarasu.discovery import available, find
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink, IAuditSinkFactory

#: sinks whose section has another name (the Rust key): sink name -> section key
SECTION_KEYS = {"s3": "s3_export"}

#: sinks that cannot be shared by several worker processes, and why
ONE_PROCESS = {
    "file": "one writer per file",
    "s3": "one spool directory per process",
}


@dataclass(frozen=True)
class AuditSettings:
    """The ``audit_log`` keys other than sink sections."""

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
    keys = {SECTION_KEYS.get(name, name): name for name in (*factories, *listed_names)}
    sections = {keys[k]: v for k, v in raw.items() if k in keys}
    settings = _settings({k: v for k, v in raw.items() if k not in keys}, keys)
    for name in sections:
        if name not in settings.outputs:
            key = SECTION_KEYS.get(name, name)
            raise ConfigError(
                f"audit_log.{key}", f"the {name} sink is configured but not in audit_log.outputs"
            )
    sinks: list[IAuditSink] = []
    for i, name in enumerate(settings.outputs):
        factory = find(IAuditSinkFactory, name, f"audit_log.outputs[{i}]", plugins)
        section = sections.get(name) or {}
        where = f"audit_log.{SECTION_KEYS.get(name, name)}"
        if not isinstance(section, Mapping):
            raise ConfigError(where, "expected a mapping")
        sinks.append(factory.build(section, where, reactor))
    if not settings.enabled:
        return None
    for i, name in enumerate(settings.outputs):
        if name in ONE_PROCESS and config.server.workers > 1:
            raise ConfigError(
                f"audit_log.outputs[{i}]",
                f"the {name} sink needs server.workers: 1 ({ONE_PROCESS[name]}; not supported"
                " yet with several workers): use the syslog sink, or one worker",
            )
    redaction = Redaction(settings.redact_headers)
    return AuditTrail(sinks, redaction, skip_probes=settings.skip_probes)


def _settings(raw: Mapping[str, Any], sections: Mapping[str, str]) -> AuditSettings:
    return from_raw_beside(AuditSettings, raw, "audit_log", sections)

"""etc/yatagarasu.service: the settings operations.md promises, and systemd accepts every key."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from yatagarasu.config.schema import ServerConfig

UNIT = Path(__file__).resolve().parents[2] / "etc" / "yatagarasu.service"


def service_section() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    return unit["Service"]


def test_notify_readiness_and_reload() -> None:
    service = service_section()
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert " -n " in service["ExecStart"]  # no fork: twistd is the main process


def test_stop_timeout_exceeds_the_default_drain() -> None:
    service = service_section()
    server = ServerConfig()
    assert service["KillSignal"] == "SIGTERM"
    drain = server.shutdown_delay_seconds + server.shutdown_grace_seconds
    assert float(service["TimeoutStopSec"]) > drain + 5


def test_hardening() -> None:
    service = service_section()
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "true"
    assert service["PrivateTmp"] == "true"
    assert service["NoNewPrivileges"] == "true"
    assert service["CacheDirectory"] == "yatagarasu"
    assert service["CapabilityBoundingSet"] == ""
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["User"] == "yatagarasu"


def test_systemd_accepts_every_key(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
        pytest.skip("systemd-analyze is missing")
    # Point the commands at something executable so that only the unit's keys are judged.
    unit = tmp_path / "yatagarasu.service"
    unit.write_text(UNIT.read_text().replace("/opt/yatagarasu/bin/twistd", "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr, result.stderr

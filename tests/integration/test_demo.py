"""``make demo`` end to end: moto with SigV4, the proxy, public and JWT-protected objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devharness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_smoke(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devharness.demo",
            "--smoke",
            "--port",
            str(free_port()),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "smoke check passed" in result.stdout
    assert "GET /private/secret.txt without a token -> 401" in result.stdout
    assert "TOKEN=" in result.stdout
    assert "GET /public/hello.txt again -> X-Cache: HIT" in result.stdout

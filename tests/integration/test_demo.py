"""``make demo`` end to end: moto with SigV4, the proxy, public and JWT-protected objects."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devharness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def demo_command(workdir: Path, *options: str) -> list[str]:
    """:returns: ``python -m devharness.demo`` on free ports, its state in ``workdir``."""
    ports = ["--port", str(free_port()), "--moto-port", str(free_port())]
    return [sys.executable, "-m", "devharness.demo", *ports, "--workdir", str(workdir), *options]


def test_demo_smoke(tmp_path: Path) -> None:
    result = subprocess.run(
        demo_command(tmp_path / "demo", "--smoke"),
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


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole group) stops moto and the proxy once, cleanly."""
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            demo_command(tmp_path / "demo"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a shell gives a foreground job
        )
    try:
        for _ in range(3000):  # up to 5 minutes (the first start imports everything)
            text = out_path.read_text(errors="replace")
            if "Ctrl-C stops the proxy and moto" in text or demo.poll() is not None:
                break
            time.sleep(0.1)
        assert demo.poll() is None, out_path.read_text(errors="replace")[-4000:]
        proxy_pid = int(re.search(r"Yatagarasu is up at \S+ \(pid (\d+)\)", text).group(1))  # type: ignore[union-attr]
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=60) == 0, out_path.read_text(errors="replace")[-4000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(timeout=30)
    text = out_path.read_text(errors="replace")
    assert "the proxy stopped cleanly" in text
    assert "Traceback" not in text and "critical" not in text, text[-4000:]
    assert "Received SIGTERM" in text and "Received SIGINT" not in text  # one signal, not two
    with pytest.raises(ProcessLookupError):
        os.kill(proxy_pid, 0)

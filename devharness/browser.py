"""Headless Chromium for the browser tests: load a page, return its DOM after the load event.

Debian's ``chromium`` package (``make chromium`` installs it when missing). Each run gets a
fresh ``--user-data-dir`` and its own process group, which is killed when the run ends or
times out, so no renderer outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

#: what to do when chromium is missing
CHROMIUM_HINT = (
    "run `make chromium` (it installs Debian's chromium with apt-get when missing), or by "
    "hand: `apt-get install -y chromium`"
)


def find_chromium() -> str | None:
    """:returns: the path of ``chromium`` (or ``chromium-browser``), or ``None``."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, *, workdir: Path, timeout: float = 60.0, budget_ms: int = 10_000) -> str:
    """
    Load ``url`` in headless Chromium and return the serialized DOM.

    ``--virtual-time-budget`` lets the page run (load event, scripts) until it is idle for
    that much virtual time, which passes at once while nothing is pending; the wall-clock
    ``timeout`` bounds the whole run.

    :param url: the page (``http://127.0.0.1:<port>/...``).
    :param workdir: where the temporary profile directory is made.
    :param timeout: seconds before the browser is killed.
    :param budget_ms: virtual milliseconds the page may run.
    :returns: the DOM as HTML.
    :raises FileNotFoundError: when chromium is not installed.
    :raises RuntimeError: when it exits with an error or times out.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"chromium is not installed; {CHROMIUM_HINT}")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    argv = [
        binary,
        "--headless",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"chromium did not finish within {timeout:g}s loading {url}") from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace")[-4000:]
        raise RuntimeError(f"chromium exited with {proc.returncode}:\n{tail}")
    return out.decode("utf-8", "replace")

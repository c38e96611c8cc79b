"""The real proxy process: ``twistd -n yatagarasu`` until stopped, or ``twistd yatagarasu
--check`` run to completion."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devharness.http_client import HttpResponse, http_request
from devharness.ports import LOOPBACK, free_port
from devharness.processes import LoggedProcess, child_env, die_with_parent, tail
from devharness.proxy_config import write_config
from devharness.waiting import StartupError, wait_until

#: ``python -m twisted`` is the newer ``twist`` runner (no ``-n``, no ``--pidfile``), so twistd
#: is started through its entry function with this interpreter.
_TWISTD_BOOT = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistd_command(*args: str) -> list[str]:
    """
    :param args: twistd arguments, e.g. ``("-n", "yatagarasu", "--config", path)``.
    :returns: the argv running ``twistd <args>`` with this interpreter.
    """
    return [sys.executable, "-c", _TWISTD_BOOT, *args]


@dataclass
class ProxyProcess:
    """A running ``twistd -n yatagarasu`` process (see :func:`start_proxy`)."""

    port: int
    address: str
    config_path: Path
    workdir: Path
    process: LoggedProcess

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """:returns: the twistd child."""
        return self.process.proc

    @property
    def log_path(self) -> Path:
        """:returns: the file twistd's stdout and stderr go to."""
        return self.process.log_path

    @property
    def base_url(self) -> str:
        """:returns: ``http://127.0.0.1:<port>`` (``http://[::1]:<port>`` for IPv6)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int:
        """:returns: the twistd process id."""
        return self.process.pid

    def url(self, path: str) -> str:
        """
        :param path: request target starting with ``/`` (sent as is).
        :returns: the absolute URL.
        """
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        """
        :param method: HTTP method.
        :param path: request target (sent exactly as given).
        :param headers: request headers.
        :param body: request body.
        :param timeout: socket timeout.
        :returns: the full response.
        """
        return http_request(method, self.url(path), headers=headers, body=body, timeout=timeout)

    def get(self, path: str, **kwargs: Any) -> HttpResponse:
        """:returns: ``request("GET", path, ...)``."""
        return self.request("GET", path, **kwargs)

    def metric(self, series: str) -> float:
        """
        :param series: a series as ``/metrics`` prints it, e.g. ``name{label="v"}``.
        :returns: its value in a scrape of ``/metrics`` now.
        """
        text = self.get("/metrics").body.decode()
        (line,) = [line for line in text.splitlines() if line.startswith(series + " ")]
        return float(line.rsplit(" ", 1)[1])

    def reloads_finished(self) -> float:
        """:returns: how many configuration reloads have finished (applied or refused)."""
        series = "yatagarasu_config_reloads_total{result="
        return self.metric(series + '"ok"}') + self.metric(series + '"error"}')

    def log_text(self) -> str:
        """:returns: everything the process wrote to stdout/stderr so far."""
        return self.process.log_text()

    def settled_log_text(self, timeout: float = 10.0) -> str:
        """
        The log once every access line of the requests made so far is in it: access lines are
        written in batches (at most a second late), so a marker request is sent and waited for
        (lines are written in order). For checks that something is *not* in the log. One
        process only: with ``server.workers`` each worker batches its own lines.

        :param timeout: seconds to wait for the marker's line.
        :returns: everything the process wrote so far.
        """
        marker = f"/settle-{uuid.uuid4().hex}"
        self.get(marker)
        self.wait_for_log(f" {marker} ", timeout=timeout)
        return self.log_text()

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> None:
        """
        Wait until ``needle`` appears in the log.

        :param needle: substring to find.
        :param timeout: seconds.
        :raises TimeoutError: when it never appears.
        """
        wait_until(lambda: needle in self.log_text(), timeout=timeout, what=f"log {needle!r}")

    def is_running(self) -> bool:
        """:returns: whether the process is still alive."""
        return self.process.is_running()

    def send_signal(self, sig: int) -> None:
        """
        :param sig: signal to deliver (e.g. ``signal.SIGHUP`` for a reload).
        """
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """
        :param timeout: seconds.
        :returns: the exit code once the process has exited.
        :raises subprocess.TimeoutExpired: when it is still running.
        """
        return self.process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Send ``sig`` and wait for the exit; SIGKILL after ``timeout``.

        :param sig: signal to send first.
        :param timeout: grace period in seconds.
        :returns: the exit code (negative = killed by that signal, as in ``subprocess``;
            twistd re-raises SIGTERM, so a clean SIGTERM shutdown may be ``-15``).
        """
        return self.process.stop(sig, timeout)

    def kill(self) -> None:
        """SIGKILL the process (no-op when it has exited) and reap it."""
        self.process.kill()


def launch_proxy(
    config: Mapping[str, Any], workdir: Path, env: Mapping[str, str] | None = None
) -> ProxyProcess:
    """
    Run ``twistd -n yatagarasu`` on ``config`` without waiting for anything (for tests that
    wait their own way: a systemd notification, a TLS handshake).

    :param config: config dict with ``server.port`` set; written to ``workdir/yatagarasu.yaml``.
    :param workdir: directory for the config, the log (``proxy.log``) and the pid file.
    :param env: extra environment variables.
    :returns: the process, maybe not listening yet.
    """
    config_path = write_config(config, Path(workdir) / "yatagarasu.yaml")
    argv = twistd_command("-n", "yatagarasu", "--config", str(config_path))
    process = LoggedProcess(argv, Path(workdir) / "proxy.log", cwd=workdir, env=child_env(env))
    server = config["server"]
    return ProxyProcess(int(server["port"]), str(server["address"]), config_path, workdir, process)


def start_proxy(
    config: Mapping[str, Any] | Path,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> ProxyProcess:
    """
    Run ``twistd -n yatagarasu --config <file>`` and wait until ``GET /health`` is 200.

    twistd runs with ``workdir`` as its current directory, so its ``twistd.pid`` stays there and
    several proxies can run at once.

    :param config: config dict (written to ``workdir/yatagarasu.yaml``; ``server.port`` 0 or
        missing is replaced by a free port) or the path of an existing YAML file.
    :param workdir: directory for the config, the log (``proxy.log``) and the pid file.
    :param env: extra environment variables.
    :param timeout: seconds to wait for ``/health``.
    :param extra_args: further twistd plugin arguments.
    :returns: the running proxy.
    :raises StartupError: when it exits early or ``/health`` never answers 200 (it is killed).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, Path):
        config_path = config
        loaded = yaml.safe_load(config_path.read_text()) or {}
        server = dict(loaded.get("server") or {})
    else:
        data = dict(config)
        server = dict(data.get("server") or {})
        if not server.get("port"):
            server["port"] = free_port()
        server.setdefault("address", LOOPBACK)
        data["server"] = server
        config_path = write_config(data, workdir / "yatagarasu.yaml")
    port = int(server.get("port") or 8080)
    address = str(server.get("address") or LOOPBACK)
    if address in ("0.0.0.0", ""):
        address = LOOPBACK
    elif address == "::":
        address = "::1"
    log_path = workdir / "proxy.log"
    argv = twistd_command("-n", "yatagarasu", "--config", str(config_path), *extra_args)
    # its own session: a terminal's Ctrl-C (SIGINT to the whole group) does not reach it as
    # well as the SIGTERM it is stopped with; it still dies with its parent
    process = LoggedProcess(argv, log_path, cwd=workdir, env=child_env(env), new_session=True)
    proxy = ProxyProcess(port, address, config_path, workdir, process)

    def healthy() -> bool:
        if not process.is_running():
            raise StartupError(f"exited with code {process.returncode}")
        return proxy.get("/health", timeout=2.0).status == 200

    try:
        wait_until(healthy, timeout=timeout, interval=0.1, what="the proxy's /health")
    except (TimeoutError, StartupError) as exc:
        proxy.kill()
        raise StartupError(
            f"proxy did not become healthy on {proxy.base_url}: {exc}\n"
            f"command: {shlex.join(argv)}\nlog tail:\n{tail(log_path)}"
        ) from exc
    return proxy


@dataclass(frozen=True)
class TwistdResult:
    """Outcome of :func:`run_twistd`."""

    returncode: int | None  # None: still running at the deadline (then killed)
    output: str  # stdout and stderr, interleaved
    timed_out: bool
    daemonized_pid: int | None  # a daemon left behind (then killed), found via twistd.pid


def run_twistd(
    args: Sequence[str],
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> TwistdResult:
    """
    Run ``twistd <args>`` to completion, bounded in time.

    Meant for ``yatagarasu --check --config X`` and for configs that must be rejected before
    the proxy listens. If the process is still running at ``timeout`` it is killed and
    ``timed_out`` is set; if it daemonized (a live pid in ``workdir/twistd.pid``), that daemon
    is killed and reported in ``daemonized_pid``.

    :param args: twistd arguments.
    :param workdir: current directory for twistd (pid file, relative paths).
    :param env: extra environment variables.
    :param timeout: seconds.
    :returns: the result.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        twistd_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=child_env(env),
        preexec_fn=die_with_parent,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    daemon: int | None = None
    pidfile = workdir / "twistd.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if pid != proc.pid:
            os.kill(pid, 0)
            daemon = pid
            os.kill(pid, signal.SIGKILL)
    return TwistdResult(
        returncode=None if timed_out else proc.returncode,
        output=out.decode(errors="replace"),
        timed_out=timed_out,
        daemonized_pid=daemon,
    )


def check_config(
    config: Mapping[str, Any] | Path,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> TwistdResult:
    """
    ``twistd yatagarasu --check --config X``.

    :param config: config dict (written to ``workdir/check.yaml``) or a YAML path.
    :param workdir: twistd's current directory.
    :param env: extra environment variables.
    :param timeout: seconds.
    :returns: the result.
    """
    path = config if isinstance(config, Path) else write_config(config, workdir / "check.yaml")
    return run_twistd(
        ["yatagarasu", "--check", "--config", str(path)], workdir, env=env, timeout=timeout
    )


def clean_exit(code: int | None) -> bool:
    """
    :param code: a ``subprocess`` exit code.
    :returns: whether it is a clean twistd shutdown (0, or the re-raised SIGTERM: -15).
    """
    return code in (0, -signal.SIGTERM)

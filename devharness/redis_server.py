"""A private ``redis-server`` on 127.0.0.1 (no persistence) that can be killed, frozen and
restarted on the same port."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

from devharness.install_hint import INSTALL_HINT
from devharness.ports import LOOPBACK, free_port
from devharness.processes import LoggedProcess, tail
from devharness.waiting import StartupError, wait_until


class RedisServer:
    """
    A private ``redis-server`` on 127.0.0.1 (no persistence), which tests may kill, freeze and
    restart on the same port.

    :param workdir: redis' working directory (its log, ``redis.log``, goes there).
    :param port: port, or ``None`` for a free one (kept across restarts).
    :param command_prefix: run redis-server under this command (e.g. ``taskset -c 0``).
    """

    def __init__(
        self, workdir: Path, port: int | None = None, *, command_prefix: Sequence[str] = ()
    ) -> None:
        self.workdir = Path(workdir)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.log_path = self.workdir / "redis.log"
        self.command_prefix = list(command_prefix)
        self._process: LoggedProcess | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        """:returns: ``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """:returns: the server's pid while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def argv(self) -> list[str]:
        """:returns: the redis-server command, without the prefix (it logs to stdout)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartupError(f"redis-server is not on PATH; {INSTALL_HINT}")
        return [
            exe,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
        ]

    def start(self, timeout: float = 15.0) -> RedisServer:
        """
        Start redis-server and wait until PING answers.

        :param timeout: seconds.
        :returns: ``self``.
        :raises StartupError: when redis-server is missing or does not answer.
        """
        argv = self.argv
        if self._process is not None and self._process.is_running():
            raise StartupError("redis-server is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = LoggedProcess([*self.command_prefix, *argv], self.log_path, cwd=self.workdir)
        self._process = process

        def answers() -> bool:
            if not process.is_running():
                raise StartupError(f"redis-server exited with code {process.returncode}")
            return self.ping(timeout=1.0)

        try:
            wait_until(answers, timeout=timeout, interval=0.05, what="redis-server PING")
        except (TimeoutError, StartupError) as exc:
            self.kill()
            raise StartupError(
                f"redis-server on port {self.port} did not start: {exc}\n"
                + tail(self.log_path, 2000)
            ) from exc
        return self

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """
        Send one command (RESP) and return the raw first reply line.

        :param args: command and arguments, e.g. ``("PING",)``.
        :param timeout: socket timeout.
        :returns: the reply's first line, e.g. ``b"+PONG"``.
        :raises OSError: connection refused, timeout…
        """
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            raw = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0]

    def ping(self, timeout: float = 2.0) -> bool:
        """
        :param timeout: socket timeout.
        :returns: whether PING answered ``+PONG``.
        """
        try:
            return self.command("PING", timeout=timeout) == b"+PONG"
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and reap it (connections then get refused)."""
        if self._process is not None:
            if self._frozen:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGCONT)
                self._frozen = False
            self._process.kill()
            self._process = None

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop the server (SIGTERM, SIGKILL after ``timeout``).

        :param timeout: grace period in seconds.
        """
        if self._process is None:
            return
        if self._frozen:
            self.thaw()
        self._process.stop(signal.SIGTERM, timeout)
        self._process = None

    def restart(self, timeout: float = 15.0) -> RedisServer:
        """
        Kill (if running) and start again on the same port, empty.

        :param timeout: seconds to wait for PING.
        :returns: ``self``.
        """
        self.kill()
        return self.start(timeout=timeout)

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but never answered."""
        if self._process is not None and not self._frozen:
            self._process.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        if self._process is not None and self._frozen:
            self._process.send_signal(signal.SIGCONT)
            self._frozen = False

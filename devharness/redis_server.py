"""A private ``redis-server`` on 127.0.0.1 (no persistence) that can be killed, frozen and
restarted on the same port; a replica of another (``replica_of``); a private Redis Sentinel
(:class:`RedisSentinel`, ``redis-server FILE --sentinel``) monitoring one of them."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

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
    :param replica_of: start as a replica of this server (``--replicaof``).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        command_prefix: Sequence[str] = (),
        replica_of: RedisServer | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.log_path = self.workdir / "redis.log"
        self.command_prefix = list(command_prefix)
        self.replica_of = replica_of
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
            *(
                ["--replicaof", self.replica_of.host, str(self.replica_of.port)]
                if self.replica_of is not None
                else []
            ),
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
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_encode_command(args))
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0]

    def query(self, *args: str, timeout: float = 2.0) -> Any:
        """
        Send one command and decode its whole (RESP2) reply.

        :param args: command and arguments, e.g. ``("GET", "k")``.
        :param timeout: socket timeout.
        :returns: ``str`` for status replies, ``int``, ``bytes`` or ``None`` for bulk
            strings, ``list`` for arrays; an error reply is returned as :class:`RedisReplyError`.
        :raises OSError: connection refused, timeout, connection closed mid-reply…
        """
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_encode_command(args))
            return _read_reply(sock.makefile("rb"))

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


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) to :meth:`RedisServer.query`."""


def _encode_command(args: Sequence[str]) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return payload


def _read_reply(stream: BinaryIO) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("the connection closed mid-reply")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP reply: {line!r}")


class RedisSentinel(RedisServer):
    """
    A private Redis Sentinel on 127.0.0.1 monitoring ``master`` under ``master_name``, with a
    quorum of 1 and short timeouts so that a failover takes a few seconds. Its configuration
    file (which Sentinel rewrites) is ``<workdir>/sentinel.conf``.

    :param workdir: its working directory.
    :param master: the server to monitor.
    :param master_name: the name to monitor it under.
    :param down_after_ms: ``down-after-milliseconds``: silence before the master is "down".
    :param failover_timeout_ms: ``failover-timeout``.
    """

    def __init__(
        self,
        workdir: Path,
        master: RedisServer,
        master_name: str = "yatagarasu",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        super().__init__(workdir)
        self.master = master
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.config_path = self.workdir / "sentinel.conf"

    @property
    def argv(self) -> list[str]:
        """:returns: ``redis-server <workdir>/sentinel.conf --sentinel``."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartupError(f"redis-server is not on PATH; {INSTALL_HINT}")
        return [exe, str(self.config_path), "--sentinel"]

    def start(self, timeout: float = 15.0) -> RedisSentinel:
        """
        Write the configuration and start the sentinel; wait until PING answers.

        :param timeout: seconds.
        :returns: ``self``.
        :raises StartupError: as :meth:`RedisServer.start`.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {self.host}",
                    "daemonize no",
                    f"dir {self.workdir}",
                    f"sentinel monitor {name} {self.master.host} {self.master.port} 1",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                    "",
                ]
            )
        )
        super().start(timeout=timeout)
        return self

    def master_address(self) -> tuple[str, int] | None:
        """:returns: the master's address as this sentinel names it now, or ``None``."""
        reply = self.query("SENTINEL", "get-master-addr-by-name", self.master_name)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        return reply[0].decode(), int(reply[1])

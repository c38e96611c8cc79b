"""Process harness for integration tests: moto S3, redis-server, the real proxy.

moto, the proxy process and config helpers come from :mod:`yatagarasu.demo` (one
implementation shared with ``make demo``); redis-server lives here. Nothing in here skips:
a missing tool is a test failure whose message says how to install it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from yatagarasu.demo import (
    LOOPBACK,
    HttpResponse,
    MotoS3Server,
    ProxyProcess,
    RecordedRequest,
    StartupError,
    TwistdResult,
    bucket_config,
    check_config,
    free_port,
    http_request,
    proxy_config,
    run_twistd,
    start_proxy,
    wait_until,
    write_config,
)

__all__ = [
    "INSTALL_HINT",
    "LOOPBACK",
    "HttpResponse",
    "MotoS3Server",
    "ProxyProcess",
    "RecordedRequest",
    "RedisServer",
    "StartupError",
    "TwistdResult",
    "bucket_config",
    "check_config",
    "clean_exit",
    "free_port",
    "http_request",
    "in_ci",
    "make_moto",
    "proxy_config",
    "run_twistd",
    "start_proxy",
    "wait_until",
    "write_config",
    "write_self_signed",
]

INSTALL_HINT = (
    "run `make test` (it creates .venv with the dev extra and installs redis-server with "
    "apt-get when missing), or by hand: `apt-get install -y redis-server` and "
    "`pip install -e '.[dev]' --config-settings editable_mode=compat`"
)


def in_ci() -> bool:
    """:returns: whether we run under CI (``CI`` set to something true)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def clean_exit(code: int | None) -> bool:
    """
    :param code: a ``subprocess`` exit code.
    :returns: whether it is a clean twistd shutdown (0, or the re-raised SIGTERM: -15).
    """
    return code in (0, -signal.SIGTERM)


class RedisServer:
    """
    A private ``redis-server`` on 127.0.0.1 (no persistence), which tests may kill, freeze and
    restart on the same port.

    :param workdir: redis' working directory (its log goes there).
    :param port: port, or ``None`` for a free one (kept across restarts).
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.log_path = self.workdir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        """:returns: ``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """:returns: the server's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> RedisServer:
        """
        Start redis-server and wait until PING answers.

        :param timeout: seconds.
        :returns: ``self``.
        :raises StartupError: when redis-server is missing or does not answer.
        """
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartupError(f"redis-server is not on PATH; {INSTALL_HINT}")
        if self._proc is not None and self._proc.poll() is None:
            raise StartupError("redis-server is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
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
            "--logfile",
            str(self.log_path),
        ]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        proc = self._proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise StartupError(f"redis-server exited with code {proc.returncode}")
            return self.ping(timeout=1.0)

        try:
            wait_until(answers, timeout=timeout, interval=0.05, what="redis-server PING")
        except (TimeoutError, StartupError) as exc:
            self.kill()
            tail = ""
            with contextlib.suppress(OSError):
                tail = self.log_path.read_text(errors="replace")[-2000:]
            raise StartupError(
                f"redis-server on port {self.port} did not start: {exc}\n{tail}"
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
        if self._proc is not None:
            if self._frozen:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGCONT)
                self._frozen = False
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(timeout=30)
            self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``)."""
        if self._proc is None:
            return
        if self._frozen:
            self.thaw()
        with contextlib.suppress(ProcessLookupError):
            self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._proc = None

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
        if self._proc is not None and not self._frozen:
            self._proc.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        if self._proc is not None and self._frozen:
            self._proc.send_signal(signal.SIGCONT)
            self._frozen = False


def make_moto(workdir: Path) -> MotoS3Server:
    """
    Start moto for tests: request recording on, SigV4 checking on and verified.

    :param workdir: directory for moto's log and recording.
    :returns: the running server.
    """
    return MotoS3Server(workdir, record_requests=True).start()


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """
    A self-signed ``localhost`` certificate (usable as its own CA) and its key, as PEM files.

    :param directory: where to write ``cert.pem`` and ``key.pem``.
    :returns: their paths.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path

"""The one child-process runner: moto, redis-server, twistd and the benchmark servers.

A :class:`LoggedProcess` writes stdout and stderr to one log file, gets SIGTERM when its parent
dies (Linux), and is stopped with a signal, then SIGKILL after a grace period, always reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def die_with_parent() -> None:
    """``preexec_fn`` for children: on Linux, get SIGTERM when the parent goes away."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except Exception:  # best effort only (non-Linux, no libc symbol)
        pass


def memory_files(pid: int) -> tuple[int, int]:
    """
    :returns: how many of the proxy's memory files (``memfd``: the memory layer's large
        bodies) ``pid`` holds open, and their size in KiB. Their pages are not mapped, so they
        are not in VmRSS.
    """
    count = size = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:yatagarasu-body"):
                count += 1
                size += os.stat(fd).st_size
        except OSError:  # closed while listing
            continue
    return count, size // 1024


def child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """
    :param env: extra environment variables.
    :returns: this process' environment without its ``AWS_*`` variables (a proxy under test
        finds only the credentials its test gives it), unbuffered Python output, the EC2
        instance metadata service off for the credentials chain
        (``AWS_EC2_METADATA_DISABLED=true``: nothing is sent to its link-local address), and
        ``env`` on top.
    """
    result = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result["PYTHONUNBUFFERED"] = "1"
    result["AWS_EC2_METADATA_DISABLED"] = "true"
    if env:
        result.update(env)
    return result


def terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """
    Send ``sig``, wait up to ``timeout``, then SIGKILL; always reaps.

    :param proc: the child.
    :param sig: the first signal.
    :param timeout: grace period in seconds.
    :returns: the exit code (negative: killed by that signal).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return proc.wait(timeout=30)


def tail(path: Path, limit: int = 4000) -> str:
    """
    :param path: a log file.
    :param limit: characters to keep.
    :returns: the end of the file, or ``""`` when it cannot be read.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


class LoggedProcess:
    """
    A started child process whose stdout and stderr both go to ``log_path``.

    :param argv: the command.
    :param log_path: log file (appended to, or truncated when ``append`` is false).
    :param cwd: the child's current directory.
    :param env: the child's whole environment (``None``: inherit ours).
    :param append: append to an existing log instead of truncating it.
    :param new_session: start the child in its own session (a terminal's Ctrl-C does not reach
        it; the parent stops it).
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        append: bool = True,
        new_session: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = open(log_path, "ab" if append else "wb")  # noqa: SIM115
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                preexec_fn=die_with_parent,
                start_new_session=new_session,
            )
        except BaseException:
            self._close_log()
            raise

    @property
    def pid(self) -> int:
        """:returns: the child's process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """:returns: the exit code once the child has exited and was reaped, else ``None``."""
        return self.proc.returncode

    def is_running(self) -> bool:
        """:returns: whether the child is still alive."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """:returns: everything the child wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig: int) -> None:
        """
        :param sig: signal to deliver.
        """
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """
        :param timeout: seconds.
        :returns: the exit code once the child has exited.
        :raises subprocess.TimeoutExpired: when it is still running.
        """
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Send ``sig`` and wait for the exit; SIGKILL after ``timeout``; close the log.

        :param sig: signal to send first.
        :param timeout: grace period in seconds.
        :returns: the exit code (negative = killed by that signal, as in ``subprocess``).
        """
        try:
            return terminate(self.proc, sig, timeout)
        finally:
            self._close_log()

    def kill(self) -> int:
        """
        SIGKILL the child (no-op when it has exited), reap it and close the log.

        :returns: the exit code.
        """
        return self.stop(signal.SIGKILL, 10.0)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

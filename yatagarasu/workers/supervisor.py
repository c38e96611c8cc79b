"""
The parent process of ``server.workers`` > 1: it binds the listening sockets, starts one
worker process per ``server.workers`` (each adopts the sockets and serves), restarts a worker
that exits with exponential backoff, and relays between the workers over their control
channels (purges, reloads, gathering ``/metrics`` and stats). The parent serves no request.

Signals: ``SIGHUP`` is passed to every worker. ``SIGTERM`` (twistd stops the service) is passed
to every worker, each drains as a single process does, and the parent waits for all of them;
one still running ``shutdown_delay_seconds`` + ``shutdown_grace_seconds`` +
:data:`KILL_MARGIN_SECONDS` later is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import CannotListenError, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from yatagarasu.config.schema import Config
from yatagarasu.systemd import SystemdNotifier
from yatagarasu.workers.control import ControlProtocol
from yatagarasu.workers.sockets import cannot_listen

log = Logger()

#: seconds after the drain's own limits before a worker that has not exited is SIGKILLed
KILL_MARGIN_SECONDS = 5.0
#: seconds to wait for SIGKILLed workers to be reaped
KILL_WAIT_SECONDS = 5.0
#: seconds the parent waits for the workers' answers to a ``gather``
ANSWER_TIMEOUT_SECONDS = 2.0
#: environment variables a worker must not inherit (systemd talks to the parent only)
PARENT_ONLY_ENVIRONMENT = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass
class Backoff:
    """
    Restart delays of one worker: ``initial``, then doubled after each quick exit, at most
    ``cap``; back to ``initial`` once a worker ran ``reset_after`` seconds.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 60.0
    failures: int = 0

    def delay(self, uptime: float) -> float:
        """
        :param uptime: how long the worker that just exited had run.
        :returns: seconds to wait before starting it again.
        """
        if uptime >= self.reset_after:
            self.failures = 0
        delay = min(self.cap, self.initial * self.factor**self.failures)
        self.failures += 1
        return delay


class Socket(Protocol):
    """What the supervisor needs of a bound socket."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


#: ``(protocol, executable, args, env, childFDs)``: ``reactor.spawnProcess`` in production
Spawner = Callable[[ProcessProtocol, str, list[str], dict[str, str], dict[int, Any]], Any]
#: ``(worker_id, fds)`` → the argv of a worker (``fds``: listening sockets, control in, out)
Command = Callable[[int, Sequence[int]], list[str]]


#: ``twistd`` run by its entry function (``python -m twisted`` is the other runner, ``twist``)
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def worker_command(config_path: str, worker_id: int, fds: Sequence[int]) -> list[str]:
    """
    :param config_path: the configuration file (made absolute).
    :param worker_id: the worker's number.
    :param fds: the worker's inherited descriptors: listening sockets, control in, control out.
    :returns: ``twistd -n --pidfile= yatagarasu --config PATH --worker N --worker-fds ...``
        with this interpreter.
    """
    return [
        sys.executable,
        "-c",
        _TWISTD,
        "--nodaemon",
        "--pidfile=",
        "yatagarasu",
        "--config",
        os.path.abspath(config_path),
        "--worker",
        str(worker_id),
        "--worker-fds",
        ",".join(str(fd) for fd in fds),
    ]


class _ChildWriter:
    """The transport of the parent's control protocol: writes go to one fd of the child."""

    disconnecting = False

    def __init__(self, process: Any, fd: int) -> None:
        self._process = process
        self._fd = fd

    def write(self, data: bytes) -> None:
        self._process.writeToChild(self._fd, data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._process.closeChildFD(self._fd)


class WorkerProcess(ProcessProtocol):
    """
    One running worker, as the parent sees it.

    :ivar worker_id: its number.
    :ivar started: when it was spawned (clock seconds).
    :ivar up: whether it said it listens.
    """

    def __init__(
        self, supervisor: Supervisor, worker_id: int, to_child: int, from_child: int, now: float
    ) -> None:
        self._supervisor = supervisor
        self.worker_id = worker_id
        self._to_child = to_child
        self._from_child = from_child
        self.started = now
        self.up = False
        self.exited = False
        self.control = ControlProtocol(lambda message: supervisor.received(self, message))

    @property
    def pid(self) -> int | None:
        """:returns: the process id (``None`` once it has exited)."""
        return getattr(self.transport, "pid", None)

    def connectionMade(self) -> None:
        self.control.makeConnection(_ChildWriter(self.transport, self._to_child))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self._from_child:
            self.control.dataReceived(data)

    def send(self, message: dict[str, Any]) -> None:
        """:param message: a control message for this worker."""
        if not self.exited:
            self.control.send(message)

    def signal(self, name: str) -> bool:
        """
        :param name: ``TERM``, ``HUP``, ``KILL``.
        :returns: whether it was sent (``False``: the process has exited).
        """
        if self.exited or self.transport is None:
            return False
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            return False
        return True

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self._supervisor.ended(self, reason)


@dataclass
class _Gathering:
    asker: WorkerProcess
    asker_id: int
    waiting: set[int]
    parts: dict[int, Any] = field(default_factory=dict)
    timeout: IDelayedCall | None = None


def exit_description(reason: Failure) -> str:
    """:returns: ``status N`` or ``signal N`` (how a process ended)."""
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"signal {value.signal}"
    return f"status {getattr(value, 'exitCode', None)}"


class Supervisor(Service):
    """
    The root service of the parent process.

    :param reactor: time, ``callFromThread``.
    :param config: the validated configuration (listeners, workers, drain limits).
    :param listeners: ``(name, host, port)`` of each listening socket to bind and hand down.
    :param command: the argv of a worker.
    :param spawn: starts a process (``reactor.spawnProcess`` without the optional arguments).
    :param bind: binds one listener (:func:`yatagarasu.workers.sockets.bind`).
    :param notifier: tells systemd when every worker is up and when the instance stops.
    :param environ: the environment workers inherit (minus :data:`PARENT_ONLY_ENVIRONMENT`).
    """

    def __init__(
        self,
        reactor: Any,
        config: Config,
        listeners: Sequence[tuple[str, str, int]],
        command: Command,
        spawn: Spawner,
        bind: Callable[[str, int], Socket],
        notifier: SystemdNotifier | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._reactor = reactor
        self.config = config
        self.listeners = list(listeners)
        self._command = command
        self._spawn = spawn
        self._bind = bind
        self._notifier = notifier or SystemdNotifier(None)
        environ = os.environ if environ is None else environ
        self._env = {k: v for k, v in environ.items() if k not in PARENT_ONLY_ENVIRONMENT}
        self.count = config.server.workers
        self.sockets: list[Socket] = []
        self.workers: dict[int, WorkerProcess] = {}
        self.backoff = {worker: Backoff() for worker in range(self.count)}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopping = False
        self._ready_sent = False
        self._gatherings: dict[int, _Gathering] = {}
        self._next_gathering = 0
        self._all_exited: list[Deferred[None]] = []
        #: workers that were starting when a SIGHUP came: they get it once they are up
        self._hup_pending: set[int] = set()

    # -- start -----------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for name, host, port in self.listeners:
            try:
                self.sockets.append(self._bind(host, port))
            except CannotListenError as e:
                for sock in self.sockets:
                    sock.close()
                raise cannot_listen(e, name) from None

    def startService(self) -> None:
        super().startService()
        self._handle_sighup()
        log.info(
            "yatagarasu parent (pid {pid}) starting {workers} worker process(es)",
            pid=os.getpid(),
            workers=self.count,
        )
        for worker in range(self.count):
            self.start_worker(worker)

    def start_worker(self, worker_id: int) -> WorkerProcess:
        """
        Spawn worker ``worker_id`` with the listening sockets and its control pipes.

        :param worker_id: its number.
        :returns: its process protocol.
        """
        self._restarts.pop(worker_id, None)
        self._hup_pending.discard(worker_id)  # it reads the configuration as it starts
        first = 3 + len(self.sockets)
        fds: dict[int, Any] = {0: 0, 1: 1, 2: 2}
        for offset, sock in enumerate(self.sockets):
            fds[3 + offset] = sock.fileno()
        fds[first] = "w"  # the worker reads its control messages here
        fds[first + 1] = "r"  # and writes its own here
        process = WorkerProcess(self, worker_id, first, first + 1, self._reactor.seconds())
        argv = self._command(worker_id, sorted(fds)[3:])
        self._spawn(process, argv[0], argv, dict(self._env), fds)
        self.workers[worker_id] = process
        log.info(
            "worker {worker} started (pid {worker_pid})", worker=worker_id, worker_pid=process.pid
        )
        return process

    def _handle_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sighup(signum: int, frame: object) -> None:
            self._reactor.callFromThread(self.pass_signal, "HUP")

        signal.signal(signal.SIGHUP, on_sighup)

    def pass_signal(self, name: str, exclude: int | None = None) -> int:
        """
        Send a signal to every running worker (but ``exclude``).

        A worker still starting has no SIGHUP handler yet (the signal would kill it): it
        gets its SIGHUP once it says it is up.

        :param name: ``HUP``, ``TERM``, ``KILL``.
        :param exclude: a worker not to signal.
        :returns: how many got it now.
        """
        targets = [(w, p) for w, p in sorted(self.workers.items()) if w != exclude]
        if name == "HUP":
            self._hup_pending.update(w for w, process in targets if not process.up)
            targets = [(w, process) for w, process in targets if process.up]
        sent = sum(process.signal(name) for _, process in targets)
        log.info("SIG{signal} passed to {count} worker(s)", signal=name, count=sent)
        return sent

    # -- exits and restarts ----------------------------------------------------------------

    def ended(self, process: WorkerProcess, reason: Failure) -> None:
        """A worker exited: log it, and restart it unless the instance is stopping."""
        worker = process.worker_id
        if self.workers.get(worker) is process:
            del self.workers[worker]
        how = exit_description(reason)
        uptime = self._reactor.seconds() - process.started
        for gathering_id, gathering in list(self._gatherings.items()):
            gathering.waiting.discard(worker)
            if gathering.asker is process:
                self._finish(gathering_id, send=False)
            elif not gathering.waiting:
                self._finish(gathering_id)
        if process.up:
            self._broadcast_up()
        if self._stopping:
            log.info("worker {worker} exited ({how})", worker=worker, how=how)
            if not self.workers:
                waiters, self._all_exited = self._all_exited, []
                for waiter in waiters:
                    waiter.callback(None)
            return
        delay = self.backoff[worker].delay(uptime)
        log.warn(
            "worker {worker} exited ({how}) after {uptime:.1f}s; restarting it in {delay:g}s",
            worker=worker,
            how=how,
            uptime=uptime,
            delay=delay,
        )
        self._restarts[worker] = self._reactor.callLater(delay, self.start_worker, worker)

    # -- control messages ------------------------------------------------------------------

    def received(self, process: WorkerProcess, message: dict[str, Any]) -> None:
        """A control message from ``process``."""
        op = message["op"]
        if op == "up":
            process.up = True
            if process.worker_id in self._hup_pending:
                self._hup_pending.discard(process.worker_id)
                process.signal("HUP")
            self._broadcast_up()
        elif op == "reload":
            log.info(
                "worker {worker} reloaded: passing the reload on to the others",
                worker=process.worker_id,
            )
            self.pass_signal("HUP", exclude=process.worker_id)
        elif op == "gather":
            self._gather(process, message)
        elif op == "answer":
            gathering = self._gatherings.get(int(message.get("id", -1)))
            if gathering is not None and process.worker_id in gathering.waiting:
                gathering.waiting.discard(process.worker_id)
                gathering.parts[process.worker_id] = message.get("body")
                if not gathering.waiting:
                    self._finish(int(message["id"]))
        else:
            log.warn(
                "ignoring control message {op!r} from worker {worker}",
                op=op,
                worker=process.worker_id,
            )

    def _broadcast_up(self) -> None:
        up = sorted(w for w, process in self.workers.items() if process.up)
        for process in self.workers.values():
            process.send({"op": "workers", "up": up})
        server = self.config.server
        if len(up) == self.count and not self._ready_sent and not self._stopping:
            self._ready_sent = True
            self._notifier.notify(
                "READY=1",
                f"STATUS={self.count} workers serving on {server.host}:{server.listen_port}",
                f"MAINPID={os.getpid()}",
            )
        elif self._ready_sent and not self._stopping:
            self._notifier.notify(f"STATUS={len(up)} of {self.count} workers up")

    def _gather(self, asker: WorkerProcess, message: dict[str, Any]) -> None:
        self._next_gathering += 1
        gathering_id = self._next_gathering
        targets = {w for w, process in self.workers.items() if process.up}
        targets.add(asker.worker_id)
        gathering = _Gathering(asker, int(message.get("id", -1)), set(targets))
        self._gatherings[gathering_id] = gathering
        gathering.timeout = self._reactor.callLater(
            ANSWER_TIMEOUT_SECONDS, self._finish, gathering_id
        )
        ask = {
            "op": "ask",
            "id": gathering_id,
            "topic": message.get("topic"),
            "argument": message.get("argument"),
        }
        for worker in sorted(targets):
            self.workers[worker].send(ask)

    def _finish(self, gathering_id: int, send: bool = True) -> None:
        gathering = self._gatherings.pop(gathering_id, None)
        if gathering is None:
            return
        if gathering.timeout is not None and gathering.timeout.active():
            gathering.timeout.cancel()
        if gathering.waiting:
            log.warn(
                "no answer from worker(s) {workers} in {timeout:g}s",
                workers=sorted(gathering.waiting),
                timeout=ANSWER_TIMEOUT_SECONDS,
            )
        if send:
            parts = {str(worker): body for worker, body in sorted(gathering.parts.items())}
            gathering.asker.send({"op": "gathered", "id": gathering.asker_id, "parts": parts})

    # -- stop ------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        # The workers hold their own copies: the sockets stay open until the last one stops
        # listening (connections queued meanwhile are served, as with one process).
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        self._notifier.notify(
            "STOPPING=1", f"STATUS=stopping: draining {len(self.workers)} worker(s)"
        )
        server = self.config.server
        limit = server.shutdown_delay_seconds + server.shutdown_grace_seconds
        limit += KILL_MARGIN_SECONDS
        self.pass_signal("TERM")
        if not await self._exited_within(limit):
            for worker, process in sorted(self.workers.items()):
                log.error(
                    "worker {worker} (pid {worker_pid}) still running {limit:g}s after SIGTERM:"
                    " sending SIGKILL",
                    worker=worker,
                    worker_pid=process.pid,
                    limit=limit,
                )
                process.signal("KILL")
            if not await self._exited_within(KILL_WAIT_SECONDS):
                log.error("worker(s) {workers} not reaped", workers=sorted(self.workers))
        log.info("all workers stopped")
        self._notifier.notify("STATUS=shutdown complete")
        self._notifier.close()

    async def _exited_within(self, seconds: float) -> bool:
        if not self.workers:
            return True
        waiter: Deferred[None] = Deferred()
        self._all_exited.append(waiter)
        waiter.addTimeout(seconds, self._reactor)
        try:
            await waiter
        except TimeoutError:
            if waiter in self._all_exited:
                self._all_exited.remove(waiter)
            return False
        return True

"""
``server.worker_cpu_affinity``: each worker process binds itself to one CPU of those it may
run on, as nginx's ``worker_cpu_affinity auto`` does. Worker N takes the N-th allowed CPU
(wrapping around when there are more workers than CPUs), so the scheduler no longer moves a
worker between CPUs and its caches stay warm.

Linux keeps a CPU mask per thread: every thread the worker has is bound, and the threads it
starts later inherit the mask. It runs as the worker starts its service, before the reactor
runs and starts its thread pool.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()


def _threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def _allowed() -> set[int]:
    return os.sched_getaffinity(0)  # Linux only: the configuration check refuses elsewhere


def _bind(tid: int, cpus: Iterable[int]) -> None:
    os.sched_setaffinity(tid, cpus)


@dataclass(frozen=True)
class Kernel:
    """
    What binding needs from the kernel (fakes in tests).

    :ivar allowed: the CPUs this process may run on (a cgroup or ``taskset`` may have
        narrowed them).
    :ivar threads: this process's thread ids.
    :ivar bind: sets one thread's CPUs.
    """

    allowed: Callable[[], Iterable[int]] = _allowed
    threads: Callable[[], Iterable[int]] = _threads
    bind: Callable[[int, Iterable[int]], None] = _bind


def bind_worker(worker_id: int, kernel: Kernel = Kernel()) -> int:
    """
    Bind the calling process to the CPU that is worker ``worker_id``'s.

    :param worker_id: the worker's number, from 0.
    :param kernel: the system calls.
    :returns: the CPU the process is now bound to.
    :raises OSError: when the kernel refuses; the threads already bound are given back all
        the allowed CPUs.
    """
    cpus = sorted(kernel.allowed())
    if not cpus:
        raise OSError("no CPU is allowed for this process")
    cpu = cpus[worker_id % len(cpus)]
    bound: list[int] = []
    try:
        for tid in kernel.threads():
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                kernel.bind(tid, {cpu})
                bound.append(tid)
    except OSError:
        for tid in bound:  # all threads or none: back to where they may run
            with contextlib.suppress(OSError):
                kernel.bind(tid, cpus)
        raise
    return cpu


def bind_to_cpu(worker_id: int, kernel: Kernel = Kernel()) -> int | None:
    """
    Bind this worker process to its CPU and log which; a worker the kernel will not bind
    (a container's seccomp profile, say) logs a warning and serves unbound.

    :param worker_id: the worker's number, from 0.
    :param kernel: the system calls.
    :returns: the CPU, or ``None`` when the process stays unbound.
    """
    try:
        cpu = bind_worker(worker_id, kernel)
    except OSError as e:
        log.warn(
            "worker {worker} could not be bound to a CPU ({error}); it runs unbound",
            worker=worker_id,
            error=str(e),
        )
        return None
    log.info("worker {worker} bound to CPU {cpu}", worker=worker_id, cpu=cpu)
    return cpu

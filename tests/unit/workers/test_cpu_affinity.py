"""server.worker_cpu_affinity: which CPU each worker takes, every thread bound, the warning when
the kernel refuses, and one real binding in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable

import pytest
from twisted.logger import LogEvent, globalLogPublisher

from yatagarasu.workers.cpu_affinity import Kernel, bind_to_cpu, bind_worker


class FakeKernel:
    def __init__(self, allowed: Iterable[int], threads: Iterable[int] = (100,)) -> None:
        self.allowed = set(allowed)
        self.threads = list(threads)
        self.bound: dict[int, set[int]] = {}

    def kernel(self) -> Kernel:
        return Kernel(lambda: self.allowed, lambda: self.threads, self.bind)

    def bind(self, tid: int, cpus: Iterable[int]) -> None:
        self.bound[tid] = set(cpus)


@pytest.mark.parametrize(
    ("allowed", "worker", "cpu"),
    [
        ({0, 1}, 0, 0),
        ({0, 1}, 1, 1),
        ({0, 1}, 2, 0),  # more workers than CPUs: they wrap around
        ({0, 1}, 3, 1),
        ({7, 2, 5}, 0, 2),  # a narrowed set (taskset, a cgroup), in CPU order
        ({7, 2, 5}, 2, 7),
    ],
)
def test_worker_n_takes_the_nth_allowed_cpu(allowed: set[int], worker: int, cpu: int) -> None:
    fake = FakeKernel(allowed)
    assert bind_worker(worker, fake.kernel()) == cpu
    assert fake.bound == {100: {cpu}}


def test_every_thread_of_the_process_is_bound() -> None:
    fake = FakeKernel({0, 1}, threads=[100, 101, 102])
    assert bind_worker(1, fake.kernel()) == 1
    assert fake.bound == {100: {1}, 101: {1}, 102: {1}}


def test_a_thread_that_ended_meanwhile_is_skipped() -> None:
    fake = FakeKernel({0, 1}, threads=[100, 101])

    def bind(tid: int, cpus: Iterable[int]) -> None:
        if tid == 100:
            raise ProcessLookupError(3, "No such process")
        fake.bound[tid] = set(cpus)

    assert bind_worker(0, Kernel(lambda: fake.allowed, lambda: fake.threads, bind)) == 0
    assert fake.bound == {101: {0}}


def test_a_refusal_after_some_threads_gives_those_back_every_allowed_cpu() -> None:
    fake = FakeKernel({0, 1}, threads=[100, 101, 102])

    def bind(tid: int, cpus: Iterable[int]) -> None:
        if tid == 101 and set(cpus) == {1}:
            raise PermissionError(1, "Operation not permitted")
        fake.bind(tid, cpus)

    with pytest.raises(PermissionError):
        bind_worker(1, Kernel(lambda: fake.allowed, lambda: fake.threads, bind))
    assert fake.bound == {100: {0, 1}}  # bound, then given back; 102 never reached


def test_no_allowed_cpu_is_an_error() -> None:
    with pytest.raises(OSError, match="no CPU is allowed"):
        bind_worker(0, FakeKernel(set()).kernel())


def _logged(call: Callable[[], object]) -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        call()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if "worker" in e and e.get("log_namespace", "").endswith("affinity")]


def test_a_bound_worker_logs_its_cpu() -> None:
    fake = FakeKernel({0, 1})
    results: list[int | None] = []
    events = _logged(lambda: results.append(bind_to_cpu(1, fake.kernel())))
    assert results == [1]
    assert [(e["log_level"].name, e["worker"], e["cpu"]) for e in events] == [("info", 1, 1)]


def test_a_refused_binding_warns_and_the_worker_runs_unbound() -> None:
    def refuse(tid: int, cpus: Iterable[int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    results: list[int | None] = []
    kernel = Kernel(lambda: {0, 1}, lambda: [100], refuse)
    events = _logged(lambda: results.append(bind_to_cpu(0, kernel)))
    assert results == [None]
    assert [(e["log_level"].name, e["worker"]) for e in events] == [("warn", 0)]
    assert "Operation not permitted" in events[0]["error"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_the_real_kernel_binds_a_child_process_and_its_threads() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, allowed)  # the mask it has: changes nothing
    except PermissionError:
        pytest.skip("this kernel (a seccomp profile) refuses sched_setaffinity")
    script = (
        "import os, threading\n"
        "from yatagarasu.workers.cpu_affinity import bind_worker\n"
        "before = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)\n"
        "before.start()\n"
        "cpu = bind_worker(1)\n"
        "tasks = os.listdir('/proc/self/task')\n"
        "masks = {tuple(sorted(os.sched_getaffinity(int(t)))) for t in tasks}\n"
        "print(cpu, sorted(masks))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    cpu = allowed[1 % len(allowed)]
    assert done.stdout.split(" ", 1) == [str(cpu), f"[({cpu},)]\n"]

"""
``yatagarasu.heap``: glibc's malloc keeps freed memory and gives it back every few seconds,
unless the operator tuned it.
"""

from __future__ import annotations

import ctypes

import pytest
from twisted.application.service import MultiService
from twisted.internet.task import Clock

from yatagarasu.heap import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    TRIM_PERIOD,
    TRIM_THRESHOLD,
    keep_freed_memory,
)


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.trims: list[int] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer

    def malloc_trim(self, pad: int) -> int:
        self.trims.append(pad)
        return 1


class MalloptOnly:
    def mallopt(self, parameter: int, value: int) -> int:
        raise AssertionError("a C library without malloc_trim is left alone")


def test_both_thresholds_are_set() -> None:
    libc = FakeLibc()
    assert keep_freed_memory({}, Clock(), libc) is not None
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    assert MMAP_THRESHOLD < TRIM_THRESHOLD


def test_the_freed_heap_is_given_back_every_trim_period_while_the_service_runs() -> None:
    clock, libc, parent = Clock(), FakeLibc(), MultiService()
    trims = keep_freed_memory({}, clock, libc)
    assert trims is not None
    trims.setServiceParent(parent)
    assert libc.trims == []  # nothing before the process starts
    parent.startService()
    assert libc.trims == [0]  # at start: what start-up freed, keeping nothing at the top
    clock.advance(TRIM_PERIOD - 0.5)
    assert libc.trims == [0]
    clock.advance(0.5)
    clock.advance(TRIM_PERIOD)
    assert libc.trims == [0, 0, 0]
    parent.stopService()
    clock.advance(TRIM_PERIOD * 3)
    assert libc.trims == [0, 0, 0]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "environ",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.arena_max=2"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"MALLOC_TOP_PAD_": "0"},
    ],
)
def test_an_operators_malloc_settings_are_kept(environ: dict[str, str]) -> None:
    libc = FakeLibc()
    assert keep_freed_memory(environ, Clock(), libc) is None
    assert libc.calls == []


def test_other_tunables_do_not_count_as_malloc_settings() -> None:
    libc = FakeLibc()
    assert keep_freed_memory({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, Clock(), libc) is not None
    assert len(libc.calls) == 2


def test_a_c_library_without_mallopt_or_malloc_trim_or_refusing_them_is_left_alone() -> None:
    assert keep_freed_memory({}, Clock(), object()) is None
    assert keep_freed_memory({}, Clock(), MalloptOnly()) is None
    refusing = FakeLibc(answer=0)
    assert keep_freed_memory({}, Clock(), refusing) is None
    assert refusing.trims == []


def test_the_process_c_library_takes_the_settings_and_trims() -> None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        pytest.fail("this test needs glibc (Debian's), as the product's target")
    clock = Clock()
    trims = keep_freed_memory({}, clock)
    assert trims is not None
    trims.startService()
    # the real malloc_trim ran without an error, so the next trim is due (an error would
    # have ended the loop)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [TRIM_PERIOD]
    trims.stopService()
    assert clock.getDelayedCalls() == []

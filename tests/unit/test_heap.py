"""``yatagarasu.heap``: glibc's malloc keeps freed memory, unless the operator tuned it."""

from __future__ import annotations

import ctypes

import pytest

from yatagarasu.heap import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    TRIM_THRESHOLD,
    keep_freed_memory,
)


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_both_thresholds_are_set() -> None:
    libc = FakeLibc()
    assert keep_freed_memory({}, libc)
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    assert MMAP_THRESHOLD < TRIM_THRESHOLD


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
    assert not keep_freed_memory(environ, libc)
    assert libc.calls == []


def test_other_tunables_do_not_count_as_malloc_settings() -> None:
    libc = FakeLibc()
    assert keep_freed_memory({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, libc)
    assert len(libc.calls) == 2


def test_a_c_library_without_mallopt_or_refusing_it_reports_false() -> None:
    assert not keep_freed_memory({}, object())
    assert not keep_freed_memory({}, FakeLibc(answer=0))


def test_the_process_c_library_takes_the_settings() -> None:
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.fail("this test needs glibc (Debian's), as the product's target")
    assert keep_freed_memory({})

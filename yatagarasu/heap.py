"""
glibc's ``malloc`` told to keep freed memory for reuse, and to give it back every few seconds.

Bodies of up to a few hundred KiB are allocated and freed on every request: a disk hit reads
its body (up to 128 KiB) into a new ``bytes``, a Redis hit joins and decodes the value. With
glibc's defaults, freeing such a block at the top of the heap gives the memory back to the
kernel (the trim threshold is 128 KiB), so the next request's block is fresh pages, and each
4 KiB page costs a page fault: about 25 of them for a 100 KiB body, a third of a disk hit's
CPU (measured in docs/PERFORMANCE.md). :func:`keep_freed_memory` raises the trim threshold
and fixes the threshold above which a block is its own ``mmap``, so such blocks come from
the heap and are reused.

What it would cost is memory held back: up to :data:`TRIM_THRESHOLD` of free heap at the top,
and free blocks inside the heap that ``malloc`` never gives back on its own. Many slow streams
show it: their 64 KiB chunks are freed all over the heap. So the freed memory is given back
every :data:`TRIM_PERIOD` seconds (``malloc_trim``): between two trims a hit's body reuses the
blocks of the hits before it, and after a trim the next bodies pay their page faults once.

An operator who tunes ``malloc`` (``GLIBC_TUNABLES`` with ``glibc.malloc.*``, or the older
``MALLOC_*_`` variables) keeps their settings, and there are no trims; a C library without
``mallopt`` or ``malloc_trim`` is left alone.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime

#: ``mallopt`` parameters (glibc's ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: free memory at the top of the heap kept before it goes back to the kernel
TRIM_THRESHOLD = 16 * 1024 * 1024
#: blocks from this size up are their own ``mmap`` (glibc moves its own default, 128 KiB at
#: start, up to 32 MiB as large blocks are freed; a fixed value stops that)
MMAP_THRESHOLD = 1024 * 1024
#: seconds between two trims, which give the freed heap back to the kernel
TRIM_PERIOD = 5.0
#: the environment variables that tune glibc's malloc
_OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(
    environ: Mapping[str, str], clock: IReactorTime, libc: Any = None
) -> TimerService | None:
    """
    Set the trim and mmap thresholds, unless the operator tuned malloc.

    :param environ: the process's environment.
    :param clock: the clock of the trims.
    :param libc: the C library (default: the process's own).
    :returns: the service that gives the freed heap back every :data:`TRIM_PERIOD` seconds
        (the caller starts it with the process); ``None`` when ``malloc`` is left as it is.
    """
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") or any(
        name in environ for name in _OPERATOR_SETTINGS
    ):
        return None
    own = libc is None
    if own:
        try:
            libc = ctypes.CDLL(None)
        except OSError:
            return None
    mallopt, malloc_trim = getattr(libc, "mallopt", None), getattr(libc, "malloc_trim", None)
    if mallopt is None or malloc_trim is None:  # not glibc
        return None
    if own:
        malloc_trim.argtypes = [ctypes.c_size_t]  # int malloc_trim(size_t pad)
    # mallopt returns 1 on success, 0 on error
    if not (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        return None
    trims = TimerService(TRIM_PERIOD, malloc_trim, 0)  # 0: keep no free memory at the top
    trims.clock = clock
    return trims

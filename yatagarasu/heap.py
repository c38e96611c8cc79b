"""
glibc's ``malloc`` told to keep freed memory for reuse.

Bodies of up to a few hundred KiB are allocated and freed on every request: a disk hit reads
its body (up to 128 KiB) into a new ``bytes``, a Redis hit joins and decodes the value. With
glibc's defaults, freeing such a block at the top of the heap gives the memory back to the
kernel (the trim threshold is 128 KiB), so the next request's block is fresh pages, and each
4 KiB page costs a page fault: about 25 of them for a 100 KiB body, a third of a disk hit's
CPU (measured in docs/PERFORMANCE.md). :func:`keep_freed_memory` raises the trim threshold
and fixes the threshold above which a block is its own ``mmap``, so such blocks come from
the heap and are reused.

What it costs is memory held back: up to :data:`TRIM_THRESHOLD` of free heap stays with the
process instead of going back to the kernel.

An operator who tunes ``malloc`` (``GLIBC_TUNABLES`` with ``glibc.malloc.*``, or the older
``MALLOC_*_`` variables) keeps their settings; a C library without ``mallopt`` is left
alone.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

#: ``mallopt`` parameters (glibc's ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: free memory at the top of the heap kept before it goes back to the kernel
TRIM_THRESHOLD = 16 * 1024 * 1024
#: blocks from this size up are their own ``mmap`` (glibc moves its own default, 128 KiB at
#: start, up to 32 MiB as large blocks are freed; a fixed value stops that)
MMAP_THRESHOLD = 1024 * 1024
#: the environment variables that tune glibc's malloc
_OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(environ: Mapping[str, str], libc: Any = None) -> bool:
    """
    Set the trim and mmap thresholds, unless the operator tuned malloc.

    :param environ: the process's environment.
    :param libc: the C library (default: the process's own).
    :returns: whether both thresholds were set.
    """
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") or any(
        name in environ for name in _OPERATOR_SETTINGS
    ):
        return False
    if libc is None:
        try:
            libc = ctypes.CDLL(None)
        except OSError:
            return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not glibc
        return False
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

"""Keep a long indexing run's heap from fragmenting (glibc only).

glibc raises its mmap threshold each time a large block is freed, so after the first few batches
the model's per-batch activations (tens of MB, a different size every batch) come from the main
heap instead of fresh mappings; freed holes between them and the long-lived index rows are never
handed back, and the process's resident memory grows with the input although nothing holds it.
Fixing the mmap threshold (and trimming the heap top eagerly) keeps such blocks in their own
mappings, returned to the system when freed. Measured with ``bgem3 index`` on one prose file and
the tiny checkpoint: 6 MB peaked at 0.56 GB with these settings; without them 2 MB peaked at
0.74 GB and 8 MB at 0.95 GB (docs/benchmarks.md, "Indexing memory").

Example:
    >>> from bgem3._malloc import bound_heap_growth
    >>> bound_heap_growth() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed instead of growing
TRIM_THRESHOLD_BYTES = 128 * 1024


def bound_heap_growth() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; ``True`` when applied, ``False`` on a
    C library without ``mallopt`` (macOS, Windows, musl), where nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    return ok

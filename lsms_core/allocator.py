"""Keep freed memory for reuse between forward passes (Linux, glibc).

A 480x480 forward pass allocates and frees dozens of tensors of up to 15 MB (120x120x256 fp32
maps). glibc serves blocks that large with fresh ``mmap`` pages and gives them back on free, so
every pass page-faults its working set in again: ~57,000 minor faults and ~110 ms of kernel time
per pass on the project's 2-core CPU, a third of the pass (docs/benchmarks.md). Raising glibc's
mmap and trim thresholds keeps those blocks in the heap, where the next pass reuses them; one
arena makes threads (the napari worker) share that heap. The price is that memory freed after a
pass stays with the process instead of going back to the system.

The arena limit only binds threads that have not allocated yet, so entry points call this first
thing; ``Segmenter`` calls it too (enough for the thread that loads and runs the model when it is
the main one). ``LSMS_NAPARI_SYSTEM_MALLOC=1`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD_BYTES = 2 ** 30

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Tune glibc's malloc as described above, once per process; True if it is in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("LSMS_NAPARI_SYSTEM_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                    and mallopt(M_ARENA_MAX, 1))
    return _applied

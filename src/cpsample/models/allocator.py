"""The C allocator's settings for tensor-heavy work on a CPU (no torch import: the CLI calls it before torch)."""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# glibc serves every allocation above its mmap threshold straight from the kernel and gives it back on free, so a
# network's large activations are faulted in afresh, page by page, at every call: plain sampling of 128 RGB images
# (32x32, one thread) spent 2.1-2.4 s of its 19.0-19.6 s in the kernel (1.3M page faults). With freed memory kept in
# the heap for reuse it took 16.5-17.1 s (bench/README, Finding 29). The price: the process holds on to its peak
# memory until it exits.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the heap is never trimmed back to the kernel


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (see above). False where the C library is not glibc (its
    mallopt is missing) or refuses: nothing changes there but speed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not kept:
        log.debug("glibc's mallopt refused the thresholds: freed memory goes back to the kernel as before")
    return kept

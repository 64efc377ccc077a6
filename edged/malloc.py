"""Keep the daemon's resident memory flat under a steady stream of frames (glibc only).

Every call allocates and frees buffers of about a megabyte (frames, results, PNGs). glibc serves those
with mmap until one is freed, then raises its mmap threshold to that size ("dynamic threshold"), after
which the same buffers come from the heap arenas of the worker threads, where fragmentation keeps pages
resident. Measured with bench/pool_bench.py (10,000 grayscale calls, 640x480, 2 workers): RSS grew by
0.8 to 65 MB from run to run with the dynamic threshold, and by 0.0 MB in each of three runs with a fixed
one. With a Pillow decode in the loop as well (5,000 decodes and calls): +60 MB dynamic, +1 to +11 MB
with MALLOC_ARENA_MAX=1, +19 to +32 MB with one arena and large fixed thresholds, +0.9 MB pinned.

The price is a page fault per 4 KiB of every large buffer, each time: measured in a VM, decoding a
640x480 JPEG took 2.8 ms instead of 1.5 ms and decode-and-grayscale throughput fell by ~15 % (page faults
cost less on bare metal). A daemon meant to run for months on 1 GB pays that for a flat RSS.

``pin_mmap_threshold`` fixes the threshold (which also turns the dynamic adjustment off), unless the
operator set ``MALLOC_MMAP_THRESHOLD_`` in the environment, which glibc has then applied already.

``trim_heap`` hands the free pages of every arena back once startup is over: imports, the store and the
model probe leave several MB free but resident in the arenas (measured: 3-6 MB of the idle daemon).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MMAP_THRESHOLD", "pin_mmap_threshold", "trim_heap"]

log = logging.getLogger(__name__)

#: glibc's own default before any dynamic adjustment.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        # gnu_get_libc_version exists only in glibc: musl's mallopt is a no-op we need not call.
        libc.gnu_get_libc_version  # noqa: B018
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False when not on glibc or left to the environment."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed; memory use may creep under load", threshold)
        return False
    return True


def trim_heap() -> bool:
    """Return the free memory of glibc's arenas to the kernel (``malloc_trim(0)``); False when not on glibc.

    Takes a few milliseconds and holds each arena's lock meanwhile: call it when idle, not per call.
    """
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True

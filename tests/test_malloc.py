"""edged.malloc: the pinned mmap threshold, observed through glibc's own counters in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# Frees a 4 MiB mmapped buffer (glibc then raises its threshold to 4 MiB unless it is pinned), then counts
# how many mmapped chunks a 512 KiB buffer adds: 1 when pinned at 128 KiB, 0 when it went to the heap.
PROBE = r"""
import ctypes, sys
from edged.malloc import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else None
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblks
keep = bytearray(512 << 10)
print(pinned, libc.mallinfo2().hblks - before)
"""


def probe(mode: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=30,
                         check=True, env={**os.environ, **env})
    return out.stdout.strip()


def test_pinned_threshold_keeps_mid_size_buffers_out_of_the_heap() -> None:
    assert probe("nopin") == "None 0"  # glibc's dynamic threshold: the buffer lands in the heap
    assert probe("pin") == "True 1"


def test_an_operator_setting_wins() -> None:
    # glibc applied the environment's threshold (here 8 MiB) itself; edged leaves it alone.
    assert probe("pin", MALLOC_MMAP_THRESHOLD_=str(8 << 20)) == "False 0"


# Fills the heap with 2,000-byte blocks, frees all but every 50th (the survivors pin the heap's top, so
# glibc's own trim on free cannot shrink it), then reports RSS (KiB) before and after trim_heap.
TRIM_PROBE = r"""
import ctypes
from edged.malloc import pin_mmap_threshold, trim_heap

def rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
pin_mmap_threshold()
blocks = [libc.malloc(2000) for _ in range(20000)]
for ptr in blocks:
    ctypes.memset(ptr, 1, 2000)
for i, ptr in enumerate(blocks):
    if i % 50:
        libc.free(ptr)
before = rss_kib()
print(trim_heap(), before, rss_kib())
"""


def test_trim_heap_returns_free_pages_inside_the_heap() -> None:
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=30,
                         check=True)
    trimmed, before, after = out.stdout.split()
    assert trimmed == "True"
    # ~39 MB were freed but stayed resident between the survivors; trimming gives most of it back.
    assert int(before) - int(after) > 20 * 1024, (before, after)

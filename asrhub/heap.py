"""Give freed audio-sized buffers back to the operating system (glibc only).

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MB), after
which arrays of that size come from the heap arenas, and every thread that allocates gets an
arena of its own. A server whose executor threads take turns decoding pieces, computing
features and running VAD then keeps the freed memory of all of them: measured on a 5.8-minute
file through the OpenAI API (tiny.en), RSS went from 239 MB idle to 520 MB. With the threshold
fixed at :data:`MMAP_THRESHOLD` (which also turns the dynamic adjustment off), blocks that large
are mapped and unmapped each time: 204 MB idle, 304 MB peak on the same file. The cost is a
page fault per 4 kB of a large array, small next to the inference that fills it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MMAP_THRESHOLD = 512 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))

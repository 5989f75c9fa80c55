"""Give freed memory back to the operating system after file work (glibc only).

glibc's malloc serves each thread that allocates from an arena, and keeps what a thread frees
there for its next allocation. For inference that is what makes it fast: CTranslate2 allocates
and frees the same large activation buffers on every encoder pass, and reusing them costs
nothing. A server whose executor threads take turns decoding pieces of long files, computing
features and running VAD, though, keeps the freed memory of all of them: measured on a
5.8-minute file through the OpenAI API (tiny.en), RSS went from 239 MB idle to 520 MB.

The first fix (issue 14) pinned the mmap threshold at 512 kB so that large blocks were mapped
and unmapped each time. It bounded memory (304 MB peak on the same file) but made every
inference call pay page faults for its buffers: Whisper base's encoder took 0.40 s instead of
0.21 s for a 15 s window and 0.22 s instead of 0.12 s for 10 s (one thread, in a real server
and alone), which was most of a live final's latency at 8 streams.

Now malloc keeps its own (dynamic) thresholds, with two bounds:

- :func:`limit_arenas`: at most one arena per core (glibc's default is eight per core, and
  with 16 executor threads and the engines' own, each thread that once decoded a piece kept
  an arena of freed buffers). ``asrhub serve`` calls it at start; ``asrhub transcribe`` asks
  for one arena, so that its decode lanes reuse one set of freed encoder buffers rather than
  each keeping its own (bench/results/long_file.md).
- :class:`HeapTrimmer` calls ``malloc_trim(0)`` after file work: it returns the free pages of
  every arena, and the next live decode refaults only what it uses. The executor trims after
  each file job (:attr:`asrhub.executor.Priority.BATCH`) at most every ``min_interval_s``, and
  ``asrhub transcribe`` after each piece.

Measured in one process, 16 executor threads, tiny.en, 25 s stretches of the 20.7-minute
recording as BATCH jobs (what the OpenAI API does): the fixed threshold stayed at 231 MB and
took 28.7 s for 8 minutes of audio; dynamic thresholds with trims alone grew from 285 to 592 MB
(21.6 s); with two arenas, 271 MB idle, 353 MB peak over all 20 minutes, 21.0 s for 8.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time
from collections.abc import Callable

MIN_INTERVAL_S = 2.0
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _glibc(name: str):  # -> a ctypes function, or None without glibc
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return None


def _malloc_trim() -> Callable[[], bool] | None:
    trim = _glibc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: bool(trim(0))


_TRIM = _malloc_trim()


def limit_arenas(arenas: int | None = None) -> bool:
    """Let malloc create at most ``arenas`` arenas (default: one per usable core, 2-8). Call it
    before threads start allocating. False where there is no glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    if arenas is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
        arenas = max(2, min(8, cores))
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """``malloc_trim(0)``: hand the free pages of every malloc arena back to the system. True
    when some memory was released; False when none was, or without glibc."""
    return _TRIM() if _TRIM is not None else False


class HeapTrimmer:
    """Calls :func:`release_free_memory` when asked, at most once every ``min_interval_s``
    (any thread; a trim walks every arena under its lock, and the decodes that follow refault
    their buffers, so it is kept to the ends of file work)."""

    def __init__(self, min_interval_s: float = MIN_INTERVAL_S,
                 release: Callable[[], bool] = release_free_memory) -> None:
        self.min_interval_s = min_interval_s
        self._release = release
        self._lock = threading.Lock()
        self._last = -float("inf")
        self.trims = 0

    def maybe_trim(self) -> bool:
        """Trim now unless a trim ran within ``min_interval_s`` (or one runs right now)."""
        now = time.monotonic()
        if now - self._last < self.min_interval_s or not self._lock.acquire(blocking=False):
            return False
        try:
            self._last = now
            self.trims += 1
            self._release()
            return True
        finally:
            self._lock.release()

"""asrhub.heap: freed memory goes back to the system after file work, and only then."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from asrhub import heap
from asrhub.executor import InferenceExecutor, Priority
from asrhub.heap import HeapTrimmer, release_free_memory

glibc = pytest.mark.skipif(heap._TRIM is None, reason="malloc_trim is glibc's")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@glibc
def test_trim_returns_the_holes_a_worker_thread_left_in_its_arena():
    """What the executor's trim is for: a thread allocates file-sized buffers, frees every other
    one (the live ones pin the heap, so malloc cannot shrink it by itself), and the freed half
    stays in the process until ``malloc_trim``."""
    kept: list[np.ndarray] = []
    before_free: list[float] = []

    def work() -> None:
        np.ones(1 << 20, dtype=np.uint8)  # a freed 1 MB mmap raises glibc's threshold past it
        blocks = [np.ones(1 << 20, dtype=np.uint8) for _ in range(240)]
        before_free.append(_rss_mb())
        kept.extend(blocks[1::2])
        del blocks

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    held = _rss_mb()
    assert before_free[0] - held < 60, "malloc gave the holes back by itself: nothing to test"
    assert release_free_memory()
    assert held - _rss_mb() > 90  # ~120 MB of holes
    assert sum(int(b[0]) for b in kept) == len(kept)  # the live half is untouched


def test_trimmer_runs_at_most_once_per_interval():
    calls: list[float] = []
    trimmer = HeapTrimmer(min_interval_s=0.2, release=lambda: calls.append(time.monotonic()) or True)
    assert trimmer.maybe_trim()
    assert not trimmer.maybe_trim()
    time.sleep(0.25)
    assert trimmer.maybe_trim()
    assert len(calls) == trimmer.trims == 2


async def test_executor_trims_after_file_jobs_not_after_live_calls():
    calls: list[str] = []
    trimmer = HeapTrimmer(min_interval_s=0, release=lambda: calls.append(threading.current_thread().name) or True)
    ex = InferenceExecutor(workers=2, max_pending=8, trimmer=trimmer)
    try:
        for _ in range(3):
            await ex.run(sum, [1, 2])  # live
        assert calls == []
        await ex.run(sum, [1, 2], priority=Priority.BATCH)
        with pytest.raises(ZeroDivisionError):
            await ex.run(lambda: 1 / 0, priority=Priority.BATCH)  # a failed file job left buffers too
        for _ in range(50):  # the trim runs in the worker after the result is handed back
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 2 and all(name.startswith("asrhub-infer-") for name in calls)
    finally:
        await ex.shutdown()


@glibc
def test_limit_arenas_is_accepted_by_glibc():
    from asrhub.heap import limit_arenas

    assert limit_arenas()  # what serve calls at start (one arena per core)
    assert limit_arenas(1)  # what transcribe calls (bench/results/long_file.md)
    assert limit_arenas(64)  # put back near glibc's default for the rest of the test session

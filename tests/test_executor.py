from __future__ import annotations

import asyncio
import threading
import time

import pytest
import structlog

from asrhub.executor import ExecutorBusy, ExecutorClosed, InferenceExecutor, Priority


async def test_runs_in_worker_threads_and_returns_results():
    ex = InferenceExecutor(workers=2, max_pending=8)
    try:
        names = await asyncio.gather(*(ex.run(lambda: threading.current_thread().name) for _ in range(4)))
        assert all(n.startswith("asrhub-infer-") for n in names)
        with pytest.raises(ZeroDivisionError):
            await ex.run(lambda: 1 / 0)
    finally:
        await ex.shutdown()


async def test_backpressure_busy_error_never_unbounded():
    ex = InferenceExecutor(workers=1, max_pending=2, busy_timeout=0.2)
    gate = threading.Event()
    try:
        first = asyncio.ensure_future(ex.run(gate.wait, 5))
        second = asyncio.ensure_future(ex.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        assert ex.stats().queue_depth + ex.stats().busy_workers == 2
        with pytest.raises(ExecutorBusy, match="queue full"):
            await ex.run(time.sleep, 0)
        assert ex.stats().rejected == 1
        gate.set()
        await asyncio.gather(first, second)
        await ex.run(time.sleep, 0)  # room again
    finally:
        gate.set()
        await ex.shutdown()


async def test_live_work_overtakes_queued_batch_work():
    ex = InferenceExecutor(workers=1, max_pending=16)
    order: list[str] = []
    gate = threading.Event()
    try:
        blocker = asyncio.ensure_future(ex.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        batch = [asyncio.ensure_future(ex.run(order.append, f"batch{i}", priority=Priority.BATCH))
                 for i in range(3)]
        await asyncio.sleep(0.01)
        live = asyncio.ensure_future(ex.run(order.append, "live", priority=Priority.LIVE))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(blocker, live, *batch)
        assert order[0] == "live"
    finally:
        gate.set()
        await ex.shutdown()


async def test_flows_take_turns_within_a_priority():
    """A client that queues many calls waits its turn behind another client's single call."""
    ex = InferenceExecutor(workers=1, max_pending=32)
    order: list[str] = []
    gate = threading.Event()
    try:
        blocker = asyncio.ensure_future(ex.run(gate.wait, 5, flow="flood"))
        await asyncio.sleep(0.05)
        flood = [asyncio.ensure_future(ex.run(order.append, f"flood{i}", flow="flood"))
                 for i in range(6)]
        await asyncio.sleep(0.01)
        others = []
        for conn in ("c2", "c3"):
            with structlog.contextvars.bound_contextvars(conn_id=conn):  # a connection's flow
                others.append(asyncio.ensure_future(ex.run(order.append, conn)))
                await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(blocker, *others, *flood)
        # "flood" had its turn (the blocker) when the others arrived: they go first, in the
        # order they came, and the flood's own calls keep their order
        assert order == ["c2", "c3", *(f"flood{i}" for i in range(6))]
    finally:
        gate.set()
        await ex.shutdown()


async def test_file_jobs_leave_workers_for_live_audio():
    """batch_workers: a burst of file jobs never takes every worker; live calls run at once."""
    ex = InferenceExecutor(workers=4, max_pending=16, batch_workers=1)
    gate = threading.Event()
    running: list[str] = []
    try:
        def file_job(name: str) -> None:
            running.append(name)
            gate.wait(5)

        files = [asyncio.ensure_future(ex.run(file_job, f"file{i}", priority=Priority.BATCH))
                 for i in range(3)]
        await asyncio.sleep(0.1)
        assert running == ["file0"]  # one at a time, though three workers are idle
        assert await ex.run(lambda: "live") == "live"  # live audio is not held up
        gate.set()
        await asyncio.gather(*files)
        assert running == ["file0", "file1", "file2"]
    finally:
        gate.set()
        await ex.shutdown()


async def test_code_in_a_worker_knows_its_call():
    from asrhub.executor import current_call

    ex = InferenceExecutor(workers=1)
    try:
        assert current_call() is None
        with structlog.contextvars.bound_contextvars(task_id="t1"):
            info = await ex.run(current_call, priority=Priority.BATCH)
        assert info is not None and (info.priority, info.flow) == (Priority.BATCH, "task_id=t1")
        assert current_call() is None  # nothing leaks into the caller's context
    finally:
        await ex.shutdown()


async def test_per_engine_concurrency_limit():
    ex = InferenceExecutor(workers=2, max_pending=16, engine_limits={"slow": 1})
    running = 0
    peak = 0
    lock = threading.Lock()

    def work():
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    try:
        await asyncio.gather(*(ex.run(work, engine="slow") for _ in range(4)))
        assert peak == 1
    finally:
        await ex.shutdown()


async def test_log_context_follows_into_worker():
    ex = InferenceExecutor(workers=1)
    try:
        with structlog.contextvars.bound_contextvars(conn_id="c-42"):
            ctx = await ex.run(structlog.contextvars.get_contextvars)
        assert ctx["conn_id"] == "c-42"
    finally:
        await ex.shutdown()


async def test_shutdown_drains_then_refuses():
    ex = InferenceExecutor(workers=1)
    pending = asyncio.ensure_future(ex.run(time.sleep, 0.1))
    await asyncio.sleep(0.01)
    await ex.shutdown(drain_timeout=5)
    await pending  # finished, not abandoned
    with pytest.raises(ExecutorClosed):
        await ex.run(time.sleep, 0)


def test_numpys_blas_runs_in_the_calling_thread():
    """The executor's workers are the parallelism: BLAS keeps no spinning pool of its own."""
    from threadpoolctl import threadpool_info

    ex = InferenceExecutor(workers=1)
    try:
        blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas)
    finally:
        asyncio.run(ex.shutdown())

"""The inference executor: blocking model calls run here, never on the event loop.

- Bounded: at most ``max_pending`` calls may wait or run; a caller beyond that waits up to
  ``busy_timeout`` seconds for room, then gets :class:`ExecutorBusy` (backpressure, never an
  unbounded queue).
- Prioritised: live audio (:attr:`Priority.LIVE`) is taken before file jobs
  (:attr:`Priority.BATCH`), so a long upload never starves a streaming session.
- Fair between sessions: every call belongs to a *flow* (the connection, upload task or HTTP
  peer that asked for it, read from the log context the transport binds, or ``flow=``). Within
  a priority, calls go in start-time fair order (each call costs one turn): a call's tag is
  the later of the virtual time (the tag of the last call taken) and its flow's previous tag
  + 1, and the lowest tag goes next (first come first served among equal tags). A client that
  queues many calls gets one turn in every round, behind every other client's waiting call;
  a new connection queues at the current round, not ahead of those already waiting.
- Room kept for live audio: at most ``batch_workers`` file jobs (:attr:`Priority.BATCH`) run at
  once, whatever the number of workers. Workers mostly wait (in the Whisper batcher, in
  CTranslate2's queue), so without this a burst of uploads filled every worker, and every one
  of their decode windows queued in CTranslate2 ahead of a live stream's final (seen in
  bench/fuzz.py: a stream's final took 15 s while uploads poured in).
- Per-engine limits: ``engine_limits["whisper"] = 1`` keeps at most one call of that engine
  running at once, whatever the number of workers.
- Memory back after file work: a file job's freed buffers are handed back to the system when
  it ends (:class:`asrhub.heap.HeapTrimmer`, at most every 2 s), so pieces of long files
  decoded by many worker threads do not each leave their memory in a malloc arena.
- Context: the caller's contextvars (structlog's bound context) are copied into the worker, and
  :func:`current_call` tells code running there its call's priority and flow (the Whisper
  batcher orders its own queue by them).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from asrhub.heap import HeapTrimmer

log = structlog.get_logger("asrhub.executor")
R = TypeVar("R")
FLOW_KEYS = ("conn_id", "task_id", "peer")  # log-context keys that name who asked, in order
MAX_FLOWS = 4096  # flows with a tag ahead of the virtual time kept before pruning


class Priority(enum.IntEnum):
    LIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class CallInfo:
    """What the executor knows about the call running in this thread."""

    priority: Priority
    flow: str


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("asrhub_call", default=None)


def current_call() -> CallInfo | None:
    """The executor call this code runs in (None outside the executor)."""
    return _current.get()


def flow_of_context() -> str:
    """The flow of the caller: its connection, task or peer from the bound log context."""
    bound = structlog.contextvars.get_contextvars()
    for key in FLOW_KEYS:
        value = bound.get(key)
        if value:
            return f"{key}={value}"
    return ""


class ExecutorBusy(RuntimeError):
    """No room in the executor within the busy timeout."""


class ExecutorClosed(RuntimeError):
    """The executor is shutting down and takes no new work."""


@dataclass
class _Job:
    fn: Callable[[], Any]
    engine: str | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    priority: Priority = Priority.LIVE
    flow: str = ""
    tag: int = 0  # fair-queuing start tag (see the module docstring)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


@dataclass
class ExecutorStats:
    workers: int
    busy_workers: int
    queue_depth: int
    max_pending: int
    completed: int
    failed: int
    rejected: int
    wait_ms_p50: float
    wait_ms_p95: float
    run_ms_p50: float
    run_ms_p95: float


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def single_threaded_blas() -> bool:
    """Make numpy's BLAS (OpenBLAS) run each call in the calling thread. Its own pool (a thread
    per core that spins while it waits) only competes with the executor's workers, which are
    the parallelism here: measured with 16 live tiny.en streams on 2 cores, the pool's thread
    used a quarter of a core and the server 20 % more CPU per audio second than with one
    thread (0.165 against 0.130 s). False when threadpoolctl finds no BLAS to limit."""
    import numpy  # noqa: F401 - loads the BLAS to limit

    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; nothing to tune without it
        return False
    if not any(lib.get("user_api") == "blas" for lib in threadpool_info()):
        return False
    threadpool_limits(limits=1, user_api="blas")  # process-wide, kept after the call
    return True


class InferenceExecutor:
    def __init__(
        self,
        workers: int = 2,
        max_pending: int = 64,
        busy_timeout: float = 30.0,
        engine_limits: dict[str, int] | None = None,
        on_done: Callable[[str | None, Priority, float, float, bool], None] | None = None,
        worker_nice: int = 0,
        batch_workers: int = 0,
        trimmer: HeapTrimmer | None = None,
    ) -> None:
        self.worker_nice = worker_nice
        self.batch_workers = batch_workers  # 0: no limit
        self.workers = workers
        self.max_pending = max_pending
        self.busy_timeout = busy_timeout
        self.engine_limits = dict(engine_limits or {})
        self._on_done = on_done
        self.trimmer = trimmer if trimmer is not None else HeapTrimmer()
        self._queues: dict[Priority, collections.deque[_Job]] = {p: collections.deque() for p in Priority}
        self._running: collections.Counter[str] = collections.Counter()
        self._running_batch = 0
        self._vtime = 0  # the tag of the last call taken
        self._next_tag: dict[str, int] = {}  # flow -> the tag its next call gets at the earliest
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._room: asyncio.Semaphore | None = None
        self._busy = 0
        self._pending = 0
        self._completed = 0
        self._failed = 0
        self._rejected = 0
        self._waits: collections.deque[float] = collections.deque(maxlen=2048)
        self._runs: collections.deque[float] = collections.deque(maxlen=2048)
        single_threaded_blas()
        for index in range(workers):
            thread = threading.Thread(target=self._worker, name=f"asrhub-infer-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # ------------------------------------------------------------------ event-loop side

    async def run(
        self,
        fn: Callable[..., R],
        *args: Any,
        priority: Priority = Priority.LIVE,
        engine: str | None = None,
        timeout: float | None = None,
        flow: str | None = None,
        **kwargs: Any,
    ) -> R:
        """Run ``fn(*args, **kwargs)`` in a worker thread and return its result. ``flow``: who
        the call is for (default: the connection/task/peer of the bound log context)."""
        if self._closed:
            raise ExecutorClosed("the server is shutting down")
        if self._room is None:
            self._room = asyncio.Semaphore(self.max_pending)
        wait = self.busy_timeout if timeout is None else timeout
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(wait):
                await self._room.acquire()
        except TimeoutError:
            self._rejected += 1
            raise ExecutorBusy(
                f"inference queue full ({self.max_pending} calls pending for {wait:.0f} s)"
            ) from None
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        flow = flow_of_context() if flow is None else flow
        ctx.run(_current.set, CallInfo(priority, flow))
        job = _Job(fn=lambda: ctx.run(fn, *args, **kwargs), engine=engine,
                   future=loop.create_future(), loop=loop, priority=priority, flow=flow)
        with self._cond:
            if self._closed:
                self._room.release()
                raise ExecutorClosed("the server is shutting down")
            job.tag = max(self._vtime, self._next_tag.get(flow, 0))
            self._next_tag[flow] = job.tag + 1
            if len(self._next_tag) > MAX_FLOWS:  # a tag at or behind the virtual time = none
                self._next_tag = {f: t for f, t in self._next_tag.items() if t > self._vtime}
            self._queues[priority].append(job)
            self._pending += 1
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        finally:
            self._room.release()

    def stats(self) -> ExecutorStats:
        waits, runs = list(self._waits), list(self._runs)
        return ExecutorStats(
            workers=self.workers,
            busy_workers=self._busy,
            queue_depth=self._pending,
            max_pending=self.max_pending,
            completed=self._completed,
            failed=self._failed,
            rejected=self._rejected,
            wait_ms_p50=_percentile(waits, 50) * 1000,
            wait_ms_p95=_percentile(waits, 95) * 1000,
            run_ms_p50=_percentile(runs, 50) * 1000,
            run_ms_p95=_percentile(runs, 95) * 1000,
        )

    @property
    def saturated(self) -> bool:
        """Every slot (waiting or running) is taken: the next caller would have to wait."""
        return self._pending + self._busy >= self.max_pending

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Stop taking work, let queued and running calls finish (up to ``drain_timeout``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + drain_timeout
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self._cond:
            leftovers = [job for q in self._queues.values() for job in q]
            for q in self._queues.values():
                q.clear()
        for job in leftovers:
            self._resolve(job, error=ExecutorClosed("the server shut down before this ran"))
        if leftovers:
            log.warning("executor_drain_incomplete", abandoned=len(leftovers))

    # ------------------------------------------------------------------ worker side

    def _take(self) -> _Job | None:
        """Next runnable job (caller holds the lock): of the highest priority with a runnable
        job (its engine has room), the one with the lowest fair-queuing tag (oldest first)."""
        for priority in Priority:
            queue = self._queues[priority]
            if (priority is Priority.BATCH and self.batch_workers
                    and self._running_batch >= self.batch_workers):
                continue
            best = -1
            for index, job in enumerate(queue):
                limit = self.engine_limits.get(job.engine or "", 0)
                if limit and self._running[job.engine or ""] >= limit:
                    continue
                if best < 0 or job.tag < queue[best].tag:
                    best = index
            if best >= 0:
                job = queue[best]
                del queue[best]
                self._vtime = max(self._vtime, job.tag)
                return job
        return None

    def _worker(self) -> None:
        if self.worker_nice:
            # Linux schedules threads as tasks: a positive nice value on the worker (inherited by
            # the thread pools that engines start from it) lets the event loop's thread win the
            # CPU whenever it wakes, which keeps loop lag low while both cores decode.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.worker_nice)
            except (OSError, AttributeError):
                pass
        while True:
            with self._cond:
                job = self._take()
                while job is None:
                    if self._closed and not any(self._queues.values()):
                        return
                    self._cond.wait(0.5)
                    job = self._take()
                self._pending -= 1
                self._busy += 1
                self._running[job.engine or ""] += 1
                self._running_batch += job.priority is Priority.BATCH
            started = time.perf_counter()
            failed = False
            try:
                if job.cancelled:
                    continue
                try:
                    result = job.fn()
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    failed = True
                    self._resolve(job, error=exc)
                else:
                    self._resolve(job, result=result)
            finally:
                finished = time.perf_counter()
                with self._cond:
                    self._busy -= 1
                    self._running[job.engine or ""] -= 1
                    self._running_batch -= job.priority is Priority.BATCH
                    self._completed += 1
                    self._failed += failed
                    self._waits.append(started - job.submitted)
                    self._runs.append(finished - started)
                    self._cond.notify_all()
                if self._on_done is not None and not job.cancelled:
                    try:
                        self._on_done(job.engine, job.priority, started - job.submitted,
                                      finished - started, failed)
                    except Exception:  # noqa: BLE001 - metrics must never kill a worker
                        pass
                if job.priority is Priority.BATCH and not job.cancelled:
                    self.trimmer.maybe_trim()

    @staticmethod
    def _resolve(job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # loop already closed
            pass

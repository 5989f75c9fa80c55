"""Drive an engine's synchronous :class:`ASRStream` from a protocol session.

A :class:`StreamPump` owns a bounded audio backlog. One consumer task hands everything queued
so far to ``stream.accept`` in the inference executor (one call per wake-up, however many
frames arrived), so calls for one stream never overlap and the loop never blocks. Hypotheses
go to the session's callback in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

from asrhub.engine import SAMPLE_RATE, ASRStream, Audio, Hypothesis
from asrhub.executor import InferenceExecutor, Priority

HypothesisCallback = Callable[[list[Hypothesis]], Awaitable[None]]


class BacklogFull(RuntimeError):
    """More unprocessed audio than the session may hold."""


class StreamPump:
    def __init__(
        self,
        executor: InferenceExecutor,
        stream: ASRStream,
        on_hypotheses: HypothesisCallback,
        *,
        engine: str | None = None,
        max_backlog_s: float = 30.0,
        priority: Priority = Priority.LIVE,
    ) -> None:
        self.executor = executor
        self.stream = stream
        self.on_hypotheses = on_hypotheses
        self.engine = engine
        self.priority = priority
        self.max_backlog = int(max_backlog_s * SAMPLE_RATE)
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self._chunks: list[Audio] = []
        self._queued = 0
        self._inflight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._error: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-pump")

    @property
    def backlog_seconds(self) -> float:
        return (self._queued + self._inflight) / SAMPLE_RATE

    def feed(self, pcm: Audio) -> None:
        """Queue audio (returns at once). Raises :class:`BacklogFull` past the limit."""
        if self._error is not None:
            raise self._error
        if self._queued + self._inflight + len(pcm) > self.max_backlog:
            raise BacklogFull(f"more than {self.max_backlog / SAMPLE_RATE:.0f} s of audio waiting")
        if len(pcm) == 0:
            return
        self._chunks.append(pcm)
        self._queued += len(pcm)
        self.audio_seconds += len(pcm) / SAMPLE_RATE
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._chunks:
                chunks, self._chunks = self._chunks, []
                pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
                self._queued -= len(pcm)
                self._inflight = len(pcm)
                try:
                    hyps = await self._call(self.stream.accept, pcm)
                finally:
                    self._inflight = 0
                if hyps:
                    await self.on_hypotheses(hyps)
            self._idle.set()

    async def _call(self, fn: Callable, *args: object) -> list[Hypothesis]:
        started = time.perf_counter()
        try:
            return await self.executor.run(fn, *args, priority=self.priority, engine=self.engine)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self.processing_seconds += time.perf_counter() - started

    async def drain(self) -> None:
        """Wait until all queued audio has been through ``accept``."""
        while not self._idle.is_set():
            if self._task.done():
                self._task.result()  # re-raise the consumer's error
                return
            idle = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({self._task, idle}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()

    async def finish(self) -> list[Hypothesis]:
        """Process the backlog, then end the stream; returns (and reports) the final hypotheses."""
        await self.drain()
        hyps = await self._call(self.stream.finish)
        if hyps:
            await self.on_hypotheses(hyps)
        return hyps

    async def reset(self) -> None:
        """Drop queued audio and the utterance in progress."""
        self._chunks.clear()
        self._queued = 0
        await self.drain()
        await self._call(self.stream.reset)

    async def close(self) -> None:
        self._closed = True
        self._chunks.clear()
        self._wake.set()
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
            pass

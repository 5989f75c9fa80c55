"""Drive an engine's synchronous :class:`ASRStream` from a protocol session.

A :class:`StreamPump` owns a bounded audio backlog. One consumer task hands everything queued
so far to ``stream.accept`` in the inference executor (one call per wake-up, however many
frames arrived), so calls for one stream never overlap and the loop never blocks. Hypotheses
go to the session's callback in order.

A :class:`LiveRecognizer` opens pumps on the hub's shared engines (``for_hub``) or on given
engines (``for_engines``, tests): every executor call it and its pumps make is tagged with the
ASR engine's name, so per-engine concurrency limits always apply::

    recognizer = LiveRecognizer.for_hub(ctx.hub)              # in the protocol's setup
    pump = await recognizer.open(on_hypotheses, language="en")  # per utterance/session
    pump.feed(pcm)            # returns at once; BacklogFull past max_backlog_s
    await pump.finish()       # the rest of the audio, then the final hypotheses
    await pump.close()
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from asrhub.engine import SAMPLE_RATE, ASREngine, ASRStream, Audio, Hypothesis, VADEngine
from asrhub.executor import InferenceExecutor, Priority

if TYPE_CHECKING:
    from asrhub.hub import Hub

HypothesisCallback = Callable[[list[Hypothesis]], Awaitable[None]]
ErrorCallback = Callable[[BaseException], "Awaitable[None] | None"]


class BacklogFull(RuntimeError):
    """More unprocessed audio than the session may hold."""


class StreamPump:
    """One live stream's backlog and consumer.

    ``on_error`` (optional, sync or async) is told at once when ``accept`` fails in the
    consumer task (the session can answer the client without waiting for its next message);
    it must not await :meth:`close` itself. After a failure :meth:`feed`, :meth:`drain` and
    :meth:`finish` raise the error. ``report_empty``: call ``on_hypotheses`` after every
    ``accept``, with an empty list when it gave none (a session that answers each audio
    message needs to know that its audio was taken in). ``last_call_seconds`` is the run time
    of the latest engine call. ``min_chunk_s``: audio is handed to ``accept`` in pieces of at
    least this much (fed frames wait until that much is queued; :meth:`flush`, :meth:`drain`
    and :meth:`finish` hand over what is left), so a session can feed every frame as it comes.
    """

    def __init__(
        self,
        executor: InferenceExecutor,
        stream: ASRStream,
        on_hypotheses: HypothesisCallback,
        *,
        engine: str | None = None,
        max_backlog_s: float = 30.0,
        priority: Priority = Priority.LIVE,
        on_error: ErrorCallback | None = None,
        report_empty: bool = False,
        min_chunk_s: float = 0.0,
    ) -> None:
        self.executor = executor
        self.stream = stream
        self.on_hypotheses = on_hypotheses
        self.on_error = on_error
        self.report_empty = report_empty
        self.engine = engine
        self.priority = priority
        self.max_backlog = int(max_backlog_s * SAMPLE_RATE)
        self.min_chunk = max(1, int(min_chunk_s * SAMPLE_RATE))
        self._flushing = False
        self._finishing = False  # finish() takes the queued audio itself
        self._accepting = asyncio.Event()  # set while the consumer is not in an accept call
        self._accepting.set()
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self.last_call_seconds = 0.0
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

    @property
    def error(self) -> BaseException | None:
        """What made the pump fail (an engine or executor error), or None."""
        return self._error

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
        if self._queued >= self.min_chunk:
            self._wake.set()

    def flush(self) -> None:
        """Hand what is queued to ``accept`` now, however little (returns at once)."""
        if not self._idle.is_set():
            self._flushing = True
            self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while (self._chunks and not self._finishing
                       and (self._queued >= self.min_chunk or self._flushing)):
                    pcm = self._take_queued()
                    self._inflight = len(pcm)
                    self._accepting.clear()
                    try:
                        hyps = await self._call(self.stream.accept, pcm)
                        if hyps or self.report_empty:
                            await self.on_hypotheses(list(hyps or ()))
                    finally:
                        self._inflight = 0
                        self._accepting.set()
                if not self._chunks:
                    self._flushing = False
                    self._idle.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - kept for feed/drain/finish, told to on_error
            if self._error is None:
                self._error = exc
            self._chunks.clear()
            self._queued = 0
            self._idle.set()
            if self.on_error is not None:
                result = self.on_error(exc)
                if inspect.isawaitable(result):
                    await result

    def _take_queued(self) -> Audio:
        chunks, self._chunks = self._chunks, []
        pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        self._queued -= len(pcm)
        return pcm

    async def _call(self, fn: Callable, *args: object) -> Any:
        started = time.perf_counter()
        try:
            return await self.executor.run(fn, *args, priority=self.priority, engine=self.engine)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self.last_call_seconds = time.perf_counter() - started
            self.processing_seconds += self.last_call_seconds

    async def _until(self, event: asyncio.Event) -> None:
        """Wait until ``event`` is set or the consumer task has ended (it failed)."""
        while not event.is_set() and not self._task.done():
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def drain(self) -> None:
        """Wait until all queued audio has been through ``accept``."""
        self.flush()
        await self._until(self._idle)
        if self._error is not None:
            raise self._error

    async def finish(self) -> list[Hypothesis]:
        """Process the backlog, then end the stream; returns (and reports) the final hypotheses.

        An ``accept`` already running completes (its hypotheses are reported); the audio still
        queued goes to the stream together with the end, in one executor call, with partial
        decodes off for it where the stream has that switch (``partials``): a partial decoded
        just before the final would only make the client wait longer for the final."""
        self._finishing = True
        cancel_partial = getattr(self.stream, "cancel_partial", None)
        if cancel_partial is not None and not self._accepting.is_set():
            cancel_partial()  # the running accept's partial, if it still waits: not worth waiting for
        try:
            await self._until(self._accepting)
            if self._error is not None:
                raise self._error
            tail = self._take_queued() if self._chunks else None
            if tail is not None:
                self._inflight = len(tail)
            try:
                tail_hyps, hyps = await self._call(_accept_and_finish, self.stream, tail)
            finally:
                self._inflight = 0
            if tail is not None and (tail_hyps or self.report_empty):
                await self.on_hypotheses(list(tail_hyps))
            if not self._chunks:
                self._flushing = False
                self._idle.set()
        finally:
            self._finishing = False
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


def _accept_and_finish(stream: ASRStream, tail: Audio | None) -> tuple[list[Hypothesis], list[Hypothesis]]:
    """``accept(tail)`` with partial decodes off (where the stream can), then ``finish()``."""
    tail_hyps: list[Hypothesis] = []
    if tail is not None and len(tail):
        partials = getattr(stream, "partials", None)
        if partials is not None:
            stream.partials = False  # type: ignore[attr-defined]
        try:
            tail_hyps = list(stream.accept(tail) or ())
        finally:
            if partials is not None:
                stream.partials = partials  # type: ignore[attr-defined]
    return tail_hyps, list(stream.finish() or ())


class LiveRecognizer:
    """Opens :class:`StreamPump` s on shared engines, every executor call tagged with the ASR
    engine's name. ``open_stream(language)`` is blocking (it runs in the executor)."""

    def __init__(self, executor: InferenceExecutor, open_stream: Callable[[str | None], ASRStream],
                 engine: str | None) -> None:
        self.executor = executor
        self.open_stream = open_stream
        self.engine = engine

    @classmethod
    def for_hub(cls, hub: Hub, *, use_vad: bool = True, asr: str | None = None,
                vad: str | None = None) -> LiveRecognizer:
        """The hub's shared ASR engine (loaded on first use), its streams segmented by the
        shared VAD engine's streams when ``use_vad`` (and a VAD engine is configured)."""

        def open_stream(language: str | None) -> ASRStream:
            engine: ASREngine = hub.engine_sync("asr", asr)
            vad_engine: VADEngine | None = hub.engine_sync("vad", vad) if use_vad else None
            return engine.open_stream(language=language,
                                      vad=vad_engine.open_stream() if vad_engine is not None else None)

        return cls(hub.executor, open_stream, hub.engine_name("asr", asr))

    @classmethod
    def for_engines(cls, executor: InferenceExecutor, asr: ASREngine,
                    vad: VADEngine | None = None) -> LiveRecognizer:
        """Given engines (tests: :class:`asrhub.testing.FakeASR`)."""

        def open_stream(language: str | None) -> ASRStream:
            return asr.open_stream(language=language, vad=vad.open_stream() if vad is not None else None)

        return cls(executor, open_stream, getattr(asr, "name", None))

    async def open_raw(self, language: str | None = None, *,
                       priority: Priority = Priority.LIVE) -> ASRStream:
        """A new engine stream (opened in the executor, tagged with the engine)."""
        return await self.executor.run(self.open_stream, language, priority=priority,
                                       engine=self.engine)

    async def open(self, on_hypotheses: HypothesisCallback, *, language: str | None = None,
                   max_backlog_s: float = 30.0, priority: Priority = Priority.LIVE,
                   on_error: ErrorCallback | None = None, report_empty: bool = False,
                   min_chunk_s: float = 0.0) -> StreamPump:
        """A new stream in a pump (see :class:`StreamPump` for the options)."""
        stream = await self.open_raw(language, priority=priority)
        return StreamPump(self.executor, stream, on_hypotheses, engine=self.engine,
                          max_backlog_s=max_backlog_s, priority=priority, on_error=on_error,
                          report_empty=report_empty, min_chunk_s=min_chunk_s)

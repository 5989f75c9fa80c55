"""One PTT connection's state machine. It never touches a socket: it is handed a ``send``
callable, a blocking ``open_stream`` factory and the inference executor, and is driven with
the text of each client message (tests drive it with plain lists of messages).

States::

    IDLE ──start──▶ RECORDING ──stop──▶ IDLE (a final result is sent)
                    │   ▲  audio: fed to the engine's stream; partial results come back
                    └───┘  reset: drop the utterance so far, keep recording

Anything else (audio or stop while IDLE, start while RECORDING) is refused with 409 and
changes nothing. An engine failure abandons the utterance (500) and returns to IDLE.

Recognition is real streaming: ``start`` opens a stream with ``engine.open_stream()`` and a
:class:`~asrhub.streaming.StreamPump` feeds it audio as it arrives; nothing re-decodes the
whole buffer. The user holds the button for the whole utterance, so the final after ``stop``
is the text of everything said since ``start``: when the engine's stream cuts it into several
utterances their final texts are joined, and a partial shows the finished utterances so far
plus the current guess.

Every audio message is answered by a result (coalesced: one result may answer several
messages) once the engine has taken it in, when partial results are on: the seed's clients
send audio and read the next message as a result. Partials whose text did not change are
rate-limited to one per ``partial_interval_s``.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from asrhub.audio import AudioError, b64_pcm16_to_float
from asrhub.engine import SAMPLE_RATE, ASRStream, Audio, Hypothesis
from asrhub.executor import ExecutorBusy, ExecutorClosed, InferenceExecutor, Priority
from asrhub.streaming import BacklogFull, StreamPump
from asrhub.text import join_texts

from . import messages as m
from .settings import PTTSettings
from .stats import PTTStats

log = structlog.get_logger("asrhub.ptt")

Send = Callable[[dict], None]
StreamFactory = Callable[[], ASRStream]


class State(enum.Enum):
    IDLE = "idle"
    RECORDING = "recording"
    CLOSED = "closed"


@dataclass
class _BatchDone:
    """Appended by :class:`_ReportingStream` after each ``accept``: the pump only calls back
    when there are hypotheses, and the session must answer audio even when there are none."""

    seconds: float
    error: BaseException | None = None


class _ReportingStream:
    """The engine's stream, plus a :class:`_BatchDone` marker after every ``accept`` call.

    ``accept`` errors are reported through the marker (instead of killing the pump's task) so
    that the session can tell the client at once.
    """

    def __init__(self, inner: ASRStream) -> None:
        self.inner = inner

    def accept(self, pcm: Audio) -> list:
        started = time.perf_counter()
        try:
            hyps = list(self.inner.accept(pcm))
        except Exception as exc:  # noqa: BLE001 - handed to the session as a 500
            return [_BatchDone(time.perf_counter() - started, exc)]
        return [*hyps, _BatchDone(time.perf_counter() - started)]

    def finish(self) -> list[Hypothesis]:
        return self.inner.finish()

    def reset(self) -> None:
        self.inner.reset()


class PTTSession:
    def __init__(
        self,
        *,
        send: Send,
        open_stream: StreamFactory,
        executor: InferenceExecutor,
        settings: PTTSettings | None = None,
        engine: str | None = None,
        stats: PTTStats | None = None,
        on_error: Callable[[int], None] | None = None,
        on_final: Callable[[float], None] | None = None,
    ) -> None:
        self.send = send
        self.open_stream = open_stream
        self.executor = executor
        self.settings = settings or PTTSettings()
        self.engine = engine
        self.stats = stats or PTTStats()
        self._on_error = on_error
        self._on_final = on_final
        self.state = State.IDLE
        self.utterances = 0
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self._pump: StreamPump | None = None
        self._finished: list[Hypothesis] = []
        self._partial: Hypothesis | None = None
        self._unanswered = 0  # audio messages fed and not yet answered by a result
        self._last_partial = 0.0  # perf_counter of the last partial sent
        self._last_batch_ms = 0.0
        self._discard = False  # set during reset: results of dropped audio are not sent
        self._failed = False  # the engine failed; the pump waits to be closed
        self._flush: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ entry points

    async def handle(self, text: str) -> None:
        """Process one client text frame (errors are replied, never raised)."""
        if self.state is State.CLOSED:
            return
        await self._reap_failed_pump()
        try:
            message = m.parse(text)
            if isinstance(message, m.AudioChunk):
                await self._audio(message)
            elif message.command == "start":
                await self._start()
            elif message.command == "stop":
                await self._stop()
            else:
                await self._reset()
        except m.ProtocolError as exc:
            self.refuse(exc.code, exc.message)

    def refuse(self, code: int, message: str) -> None:
        """Send an ``error`` message (also used by the handler for transport-level refusals)."""
        self.stats.errors[code] += 1
        if self._on_error is not None:
            self._on_error(code)
        log.debug("ptt_error", code=code, reason=message, state=self.state.value)
        self.send(m.error(code, message))

    async def close(self) -> None:
        """The connection is gone: abandon any utterance in progress."""
        if self.state is State.CLOSED:
            return
        if self.state is State.RECORDING:
            self.stats.utterances_active -= 1
        self.state = State.CLOSED
        await self._drop_pump()

    # ------------------------------------------------------------------ transitions

    async def _start(self) -> None:
        if self.state is State.RECORDING:
            raise m.ProtocolError(m.WRONG_STATE, "already started: send stop (or reset) first")
        try:
            stream = await self.executor.run(self.open_stream, priority=Priority.LIVE,
                                             engine=self.engine)
        except (ExecutorBusy, ExecutorClosed) as exc:
            raise m.ProtocolError(m.BUSY, f"server busy: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the client is told; the log has the trace
            log.exception("ptt_open_stream_failed")
            raise m.ProtocolError(m.INTERNAL, f"could not start recognition: {exc}") from None
        if self.state is State.CLOSED:  # closed while the stream was being opened
            return
        self._clear_utterance()
        self._pump = StreamPump(self.executor, _ReportingStream(stream), self._on_hypotheses,
                                engine=self.engine, max_backlog_s=self.settings.max_backlog_s)
        self.state = State.RECORDING
        self.utterances += 1
        self.stats.utterances_total += 1
        self.stats.utterances_active += 1

    async def _audio(self, message: m.AudioChunk) -> None:
        if self.state is not State.RECORDING:
            raise m.ProtocolError(m.WRONG_STATE, 'send {"type": "control", "command": "start"} '
                                                 "before audio")
        try:
            pcm = b64_pcm16_to_float(message.data)
        except AudioError as exc:
            raise m.ProtocolError(m.BAD_REQUEST, f"{exc} (expected base64 of PCM int16 "
                                                 "little-endian, 16 kHz mono)") from None
        assert self._pump is not None
        if len(pcm) == 0:
            self._unanswered += 1
            self._answer()
            return
        try:
            self._pump.feed(pcm)
        except BacklogFull as exc:
            raise m.ProtocolError(m.BACKLOG_FULL, f"audio dropped: {exc}; send audio no faster "
                                                  "than real time") from None
        except Exception as exc:  # noqa: BLE001 - the pump died (executor busy or closed)
            await self._abandon()
            raise self._engine_error(exc) from None
        seconds = len(pcm) / SAMPLE_RATE
        self.audio_seconds += seconds
        self.stats.audio_seconds += seconds
        self._unanswered += 1

    async def _stop(self) -> None:
        if self.state is not State.RECORDING:
            raise m.ProtocolError(m.WRONG_STATE, "not started: nothing to stop")
        started = time.perf_counter()
        pump = self._pump
        assert pump is not None
        self._cancel_flush()
        try:
            await pump.finish()
        except Exception as exc:  # noqa: BLE001
            failed = self._failed
            await self._abandon()
            if failed:  # the client was already told
                return
            raise self._engine_error(exc) from None
        if self._failed:
            await self._abandon()
            return
        text, confidence = self._current_text()
        await self._drop_pump()
        self._end_utterance()
        elapsed = time.perf_counter() - started
        self.stats.final_ms.append(elapsed * 1000)
        if self._on_final is not None:
            self._on_final(elapsed)
        self.send(m.result("final", text, confidence, elapsed * 1000))
        self._clear_utterance()

    async def _reset(self) -> None:
        if self.state is not State.RECORDING:
            return  # nothing to drop
        assert self._pump is not None
        self._cancel_flush()
        self._discard = True
        try:
            await self._pump.reset()
        except Exception as exc:  # noqa: BLE001
            await self._abandon()
            raise self._engine_error(exc) from None
        finally:
            self._discard = False
        self._clear_utterance()

    # ------------------------------------------------------------------ results

    async def _on_hypotheses(self, items: list) -> None:
        """Called by the pump (in order) with each ``accept``'s hypotheses and the batch marker,
        and with the final hypotheses of ``finish``."""
        if self._discard or self.state is not State.RECORDING:
            return
        changed = False
        for item in items:
            if isinstance(item, _BatchDone):
                self._last_batch_ms = item.seconds * 1000
                if item.error is not None:
                    self._engine_failed(item.error)
                    return
                if changed:  # a new guess: the engine decoded (other calls only buffer)
                    self.stats.partial_ms.append(self._last_batch_ms)
                self._answer(changed)
            elif item.is_final:
                self._finished.append(item)
                self._partial = None
                changed = True
            else:
                changed = changed or self._partial is None or item.text != self._partial.text
                self._partial = item

    def _answer(self, changed: bool = False) -> None:
        """Send a partial if the text changed, or if audio is waiting for an answer (rate
        limited: an unchanged partial at most every ``partial_interval_s``)."""
        if not self.settings.partial_results or self.state is not State.RECORDING:
            return
        if not (changed or self._unanswered):
            return
        wait = self._last_partial + self.settings.partial_interval_s - time.perf_counter()
        if changed or wait <= 0:
            self._send_partial()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(wait, self._flush_due)

    def _flush_due(self) -> None:
        self._flush = None
        if self._unanswered and not self._discard and self.state is State.RECORDING:
            self._send_partial()

    def _send_partial(self) -> None:
        self._cancel_flush()
        text, confidence = self._current_text()
        self._unanswered = 0
        self._last_partial = time.perf_counter()
        self.send(m.result("partial", text, confidence, self._last_batch_ms))

    def _current_text(self) -> tuple[str, float]:
        hyps = [*self._finished, *([self._partial] if self._partial is not None else [])]
        hyps = [h for h in hyps if h.text.strip()]
        if not hyps:
            return "", 0.0
        weights = [max(h.end - h.start, 1e-3) for h in hyps]
        confidence = sum(h.confidence * w for h, w in zip(hyps, weights, strict=True)) / sum(weights)
        return join_texts([h.text for h in hyps]), confidence

    # ------------------------------------------------------------------ failures and cleanup

    def _engine_error(self, exc: BaseException) -> m.ProtocolError:
        if isinstance(exc, ExecutorBusy | ExecutorClosed):
            return m.ProtocolError(m.BUSY, f"server busy, utterance abandoned: {exc}")
        log.error("ptt_engine_failed", error=repr(exc))
        return m.ProtocolError(m.INTERNAL, f"recognition failed, utterance abandoned: {exc}")

    def _engine_failed(self, exc: BaseException) -> None:
        """An ``accept`` raised (inside the pump's task): tell the client now, close the pump at
        the next message (it cannot close itself from its own callback)."""
        self._failed = True
        self._end_utterance()
        self._cancel_flush()
        error = self._engine_error(exc)
        self.refuse(error.code, error.message)

    async def _reap_failed_pump(self) -> None:
        if self._failed:
            await self._drop_pump()
            self._failed = False

    async def _abandon(self) -> None:
        self._end_utterance()
        await self._drop_pump()
        self._failed = False
        self._clear_utterance()

    def _end_utterance(self) -> None:
        if self.state is State.RECORDING:
            self.state = State.IDLE
            self.stats.utterances_active -= 1

    async def _drop_pump(self) -> None:
        self._cancel_flush()
        pump, self._pump = self._pump, None
        if pump is not None:
            await pump.close()
            self.processing_seconds += pump.processing_seconds

    def _clear_utterance(self) -> None:
        self._finished = []
        self._partial = None
        self._unanswered = 0
        self._last_partial = 0.0

    def _cancel_flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

"""One PTT connection's state machine: a :class:`asrhub.protocol.Session`. It never touches a
socket: it talks to the client through its :class:`~asrhub.protocol.Channel` and recognises
through a :class:`~asrhub.streaming.LiveRecognizer` (tests drive it with plain lists of
messages, a recording channel and the shared fake engine).

States::

    IDLE ──start──▶ RECORDING ──stop──▶ IDLE (a final result is sent)
                    │   ▲  audio: fed to the engine's stream; partial results come back
                    └───┘  reset: drop the utterance so far, keep recording

Anything else (audio or stop while IDLE, start while RECORDING) is refused with 409 and
changes nothing. An engine failure abandons the utterance (500) and returns to IDLE; the
connection stays usable. Errors are raised as :class:`~asrhub.protocol.ProtocolError` and
answered (and counted) by the protocol kit; the kit also enforces the message-size and
connection limits.

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

Idle connections (nothing received for ``idle_timeout_s``; heartbeat pings do not count) get
error 408 and are closed (1000, "idle timeout"). At server shutdown a hold in progress gets
its final for the audio already received before the connection closes.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable

import structlog

from asrhub.audio import AudioError, b64_pcm16_to_float
from asrhub.engine import SAMPLE_RATE, Hypothesis
from asrhub.executor import ExecutorBusy, ExecutorClosed
from asrhub.protocol import CloseInfo, ProtocolError, Session
from asrhub.streaming import BacklogFull, LiveRecognizer, StreamPump
from asrhub.text import join_texts

from . import messages as m
from .settings import PTTSettings
from .stats import PTTStats

log = structlog.get_logger("asrhub.ptt")


class State(enum.Enum):
    IDLE = "idle"
    RECORDING = "recording"
    CLOSED = "closed"


class PTTSession(Session):
    def __init__(
        self,
        channel,
        recognizer: LiveRecognizer,
        settings: PTTSettings | None = None,
        *,
        stats: PTTStats | None = None,
        observe_final: Callable[[float], None] | None = None,
    ) -> None:
        self.channel = channel
        self.recognizer = recognizer
        self.settings = settings or PTTSettings()
        self.stats = stats or PTTStats()
        self._observe_final = observe_final
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
        self._stopping = False  # finish() is running: its hypotheses go into the final only
        self._discard = False  # set during reset: results of dropped audio are not sent
        self._failed = False  # the engine failed; the pump waits to be closed
        self._flush: asyncio.TimerHandle | None = None
        self._last_message = time.monotonic()
        self._idle_task: asyncio.Task | None = None
        self._stop_task: asyncio.Future | None = None

    # ------------------------------------------------------------------ the kit's entry points

    async def on_open(self) -> None:
        self.channel.send_json(m.status("connected", session_id=self.channel.conn_id))
        if self.settings.idle_timeout_s > 0:
            self._idle_task = asyncio.get_running_loop().create_task(
                self._watch_idle(), name=f"ptt-idle-{self.channel.conn_id}")

    async def on_text(self, text: str) -> None:
        """One client text frame. Refusals are raised as ProtocolError (the kit answers)."""
        self._last_message = time.monotonic()
        if self.state is State.CLOSED:
            return
        await self._reap_failed_pump()
        message = m.parse(text)
        if isinstance(message, m.AudioChunk):
            await self._audio(message)
        elif message.command == "start":
            await self._start()
        elif message.command == "stop":
            # Shielded: a shutdown that stops reading mid-stop lets the final go out (on_close
            # waits for it) instead of abandoning the engine call half-way.
            self._stop_task = asyncio.ensure_future(self._stop())
            await asyncio.shield(self._stop_task)
        else:
            await self._reset()

    async def on_binary(self, data: bytes) -> None:
        self._last_message = time.monotonic()
        raise ProtocolError(m.BAD_REQUEST, "binary frames are not part of this protocol: send "
                                           'JSON text {"type": "audio", "data": "<base64 PCM>"}')

    async def on_close(self, info: CloseInfo) -> None:
        """The connection ends. At shutdown a hold in progress gets its final first."""
        if self._idle_task is not None and self._idle_task is not asyncio.current_task():
            self._idle_task.cancel()
        if self._stop_task is not None and not self._stop_task.done():
            try:  # a stop in progress when reading stopped: its final goes out first
                await self._stop_task
            except Exception:  # noqa: BLE001 - reported (or not) by the stop itself
                pass
        if self.state is State.RECORDING and info.shutdown and not self._failed:
            try:
                await self._stop()
            except ProtocolError as err:
                self.channel.send_error(err)
        await self.close()

    def summary(self) -> dict:
        return {"utterances": self.utterances}

    async def close(self) -> None:
        """Abandon any utterance in progress (the connection is gone)."""
        if self.state is State.CLOSED:
            return
        if self.state is State.RECORDING:
            self.stats.utterances_active -= 1
        self.state = State.CLOSED
        if self._idle_task is not None and self._idle_task is not asyncio.current_task():
            self._idle_task.cancel()
        await self._drop_pump()

    # ------------------------------------------------------------------ transitions

    async def _start(self) -> None:
        if self.state is State.RECORDING:
            raise ProtocolError(m.WRONG_STATE, "already started: send stop (or reset) first")
        try:
            pump = await self.recognizer.open(
                self._on_hypotheses, language=self.settings.language or None,
                max_backlog_s=self.settings.max_backlog_s, on_error=self._engine_failed,
                report_empty=True)
        except (ExecutorBusy, ExecutorClosed):
            raise  # the kit answers 503 (busy / shutting down)
        except Exception as exc:  # noqa: BLE001 - the client is told; the log has the trace
            log.exception("ptt_open_stream_failed")
            raise ProtocolError(m.INTERNAL, f"could not start recognition: {exc}") from None
        if self.state is State.CLOSED:  # closed while the stream was being opened
            await pump.close()
            return
        self._clear_utterance()
        self._pump = pump
        self.state = State.RECORDING
        self.utterances += 1
        self.stats.utterances_total += 1
        self.stats.utterances_active += 1

    async def _audio(self, message: m.AudioChunk) -> None:
        if self.state is not State.RECORDING:
            raise ProtocolError(m.WRONG_STATE, 'send {"type": "control", "command": "start"} '
                                               "before audio")
        try:
            pcm = b64_pcm16_to_float(message.data)
        except AudioError as exc:
            raise ProtocolError(m.BAD_REQUEST, f"{exc} (expected base64 of PCM int16 "
                                               "little-endian, 16 kHz mono)") from None
        assert self._pump is not None
        if len(pcm) == 0:
            self._unanswered += 1
            self._answer()
            return
        try:
            self._pump.feed(pcm)
        except BacklogFull as exc:
            raise ProtocolError(m.BACKLOG_FULL, f"audio dropped: {exc}; send audio no faster "
                                                "than real time") from None
        except Exception as exc:  # noqa: BLE001 - the pump failed (already told) or died
            failed = self._failed
            await self._abandon()
            if failed:
                return
            raise self._engine_error(exc) from None
        seconds = len(pcm) / SAMPLE_RATE
        self.audio_seconds += seconds
        self.stats.audio_seconds += seconds
        self._unanswered += 1

    async def _stop(self) -> None:
        if self.state is not State.RECORDING:
            raise ProtocolError(m.WRONG_STATE, "not started: nothing to stop")
        started = time.perf_counter()
        pump = self._pump
        assert pump is not None
        try:
            await pump.drain()  # audio still queued is answered with partials as usual
            self._cancel_flush()
            self._stopping = True
            await pump.finish()
        except Exception as exc:  # noqa: BLE001
            failed = self._failed
            await self._abandon()
            if failed:  # the client was already told
                return
            raise self._engine_error(exc) from None
        finally:
            self._stopping = False
        if self._failed:
            await self._abandon()
            return
        text, confidence = self._current_text()
        await self._drop_pump()
        self._end_utterance()
        elapsed = time.perf_counter() - started
        self.stats.final_ms.append(elapsed * 1000)
        if self._observe_final is not None:
            self._observe_final(elapsed)
        self.channel.send_json(m.result("final", text, confidence, elapsed * 1000))
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
            failed = self._failed
            await self._abandon()
            if not failed:
                raise self._engine_error(exc) from None
        finally:
            self._discard = False
        self._clear_utterance()

    # ------------------------------------------------------------------ results

    async def _on_hypotheses(self, hyps: list[Hypothesis]) -> None:
        """Called by the pump, in order: after every ``accept`` (possibly with no hypotheses)
        and with the final hypotheses of ``finish``."""
        if self._discard or self.state is not State.RECORDING:
            return
        changed = False
        for hyp in hyps:
            if hyp.is_final:
                self._finished.append(hyp)
                self._partial = None
                changed = True
            else:
                changed = changed or self._partial is None or hyp.text != self._partial.text
                self._partial = hyp
        if self._stopping:  # finish(): the final carries it
            return
        if self._pump is not None:
            self._last_batch_ms = self._pump.last_call_seconds * 1000
        if changed:  # a new guess: the engine decoded (other calls only buffer)
            self.stats.partial_ms.append(self._last_batch_ms)
        self._answer(changed)

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
        self.channel.send_json(m.result("partial", text, confidence, self._last_batch_ms))

    def _current_text(self) -> tuple[str, float]:
        hyps = [*self._finished, *([self._partial] if self._partial is not None else [])]
        hyps = [h for h in hyps if h.text.strip()]
        if not hyps:
            return "", 0.0
        weights = [max(h.end - h.start, 1e-3) for h in hyps]
        confidence = sum(h.confidence * w for h, w in zip(hyps, weights, strict=True)) / sum(weights)
        return join_texts([h.text for h in hyps]), confidence

    # ------------------------------------------------------------------ idle and failures

    async def _watch_idle(self) -> None:
        idle = self.settings.idle_timeout_s
        while not self.channel.closed:
            remaining = self._last_message + idle - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            self.channel.send_error(ProtocolError(
                m.IDLE_TIMEOUT, f"nothing received for {idle:g} s: closing the connection"))
            self.channel.close_soon(1000, "idle timeout")
            return

    def _engine_error(self, exc: BaseException) -> ProtocolError:
        if isinstance(exc, ExecutorBusy | ExecutorClosed):
            return ProtocolError(m.BUSY, f"server busy, utterance abandoned: {exc}")
        log.error("ptt_engine_failed", error=repr(exc))
        return ProtocolError(m.INTERNAL, f"recognition failed, utterance abandoned: {exc}")

    def _engine_failed(self, exc: BaseException) -> None:
        """An ``accept`` raised (the pump's on_error, inside its task): tell the client now,
        close the pump at the next message (it cannot close itself from its own callback)."""
        if self.state is not State.RECORDING or self._discard or self._stopping:
            return  # reset/stop is awaiting the pump: it gets the error from drain and tells
        self._failed = True
        self._end_utterance()
        self._cancel_flush()
        self.channel.send_error(self._engine_error(exc))

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

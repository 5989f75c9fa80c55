"""The streaming STT state machine, driven with plain lists of messages (no sockets).

The engine stream here is scripted: it reports how much audio it was given, in words, so the
tests check the protocol's logic (ordering, composition of partials, cadence, errors, idle end,
cleanup), not recognition. Recognition is tested end to end with Whisper in test_stt_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import numpy as np
import pytest
import stt_helpers as h

from asrhub.engine import Hypothesis
from asrhub.executor import InferenceExecutor
from asrhub_plugins.streaming_stt import messages as m
from asrhub_plugins.streaming_stt.session import State, StreamingSession
from asrhub_plugins.streaming_stt.settings import StreamingSTTSettings


class ScriptedStream:
    """An utterance every ``utterance_s`` of audio; its text is one word per second received."""

    def __init__(self, utterance_s: float = 2.0, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.utterance = int(utterance_s * 16000)
        self.delay = delay
        self.fail_after = fail_after
        self.accepted: list[int] = []
        self.threads: set[str] = set()
        self.samples = 0
        self.n = 1
        self.finished = False

    def _words(self) -> str:
        return " ".join(f"u{self.n}w{i}" for i in range(1, self.samples // 16000 + 2))

    def accept(self, pcm: np.ndarray) -> list[Hypothesis]:
        self.threads.add(threading.current_thread().name)
        if self.fail_after is not None and len(self.accepted) >= self.fail_after:
            raise RuntimeError("scripted failure")
        time.sleep(self.delay)
        self.accepted.append(len(pcm))
        out = []
        self.samples += len(pcm)
        while self.samples >= self.utterance:
            self.samples -= self.utterance
            out.append(Hypothesis(" ".join(f"u{self.n}w{i}" for i in range(1, self.utterance // 16000 + 1)),
                                  True, self.n, 0, 0))
            self.n += 1
        out.append(Hypothesis(self._words(), False, self.n, 0, 0))
        return out

    def finish(self) -> list[Hypothesis]:
        self.finished = True
        return [Hypothesis(self._words() + " end", True, self.n, 0, 0)] if self.samples else []

    def reset(self) -> None:
        self.samples = 0


class Harness:
    def __init__(self, executor: InferenceExecutor, **settings: Any) -> None:
        self.sent: list[dict] = []
        self.streams: list[ScriptedStream] = []
        self.stream_args: dict[str, Any] = {}
        self.errors: list[str] = []
        self.latencies: list[float] = []

        async def open_stream(language: str | None) -> ScriptedStream:
            self.streams.append(ScriptedStream(**self.stream_args))
            self.streams[-1].language = language  # type: ignore[attr-defined]
            return self.streams[-1]

        self.session = StreamingSession(
            send=self.sent.append, open_stream=open_stream, executor=executor,
            settings=StreamingSTTSettings(**{"idle_end_s": 0, **settings}),
            count_error=self.errors.append, observe_final_latency=self.latencies.append)

    def types(self) -> list[str]:
        return [msg["type"] for msg in self.sent]

    def take(self) -> list[dict]:
        out, self.sent[:] = list(self.sent), []
        return out

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> None:
        """Until ``count`` messages of this type were sent (polling, not fixed sleeps: the
        machine may be busy)."""
        deadline = time.monotonic() + timeout
        while self.types().count(kind) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def start(self, **extra: Any) -> None:
        await self.session.on_text(json.dumps({"command": "start", **extra}))

    async def stop(self) -> None:
        await self.session.on_text('{"command": "stop"}')

    async def audio(self, seconds: float, frame: int = 1024, speed: float = 0) -> None:
        """Send PCM frames; ``speed`` > 0 paces them (x real time), 0 sends back to back."""
        audio = (np.sin(np.arange(int(seconds * 16000)) / 7) * 0.3).astype(np.float32)
        chunks = h.pcm_chunks(audio, frame)
        if speed:
            await h.send_paced(self.session.on_binary, chunks, speed)
        else:
            for _, data in chunks:
                await self.session.on_binary(data)


@pytest.fixture
async def executor():
    ex = InferenceExecutor(workers=2)
    yield ex
    await ex.shutdown(2)


async def test_start_audio_partials_stop_final_ended(executor: InferenceExecutor) -> None:
    t = Harness(executor, feed_interval_s=0.5)
    await t.start()
    assert t.take() == [m.session_started()]
    await t.audio(5.3, speed=10)
    await asyncio.sleep(0.2)
    await t.stop()
    msgs = t.take()
    stream = t.streams[0]
    # The engine is fed every ~0.5 s of new audio, never less (a busy machine may batch two).
    assert all(n >= 8000 for n in stream.accepted[:-1]) and len(stream.accepted) >= 5, stream.accepted
    assert stream.finished and all(name.startswith("asrhub-infer") for name in stream.threads)
    types = [x["type"] for x in msgs]
    assert types[-2:] == ["final", "session_ended"] and set(types[:-2]) == {"partial"}
    partial_texts = [x["text"] for x in msgs[:-2]]
    # One partial per change of text (the scripted text changes every second of audio).
    assert len(partial_texts) >= 3 and all(a != b for a, b in zip(partial_texts, partial_texts[1:], strict=False))
    partials = [x["text"] for x in msgs if x["type"] == "partial"]
    assert all(x["is_final"] is False for x in msgs[:-2]) and msgs[-2]["is_final"] is True
    # Finished utterances stay as they were; the current one follows them.
    assert partials[0] == "u1w1"
    assert "u1w1 u1w2 u2w1" in partials
    assert msgs[-2]["text"] == "u1w1 u1w2 u2w1 u2w2 u3w1 u3w2 end"
    assert t.latencies and t.latencies[0] < 1.0
    assert t.session.state is State.ENDED and t.session.audio_seconds == pytest.approx(5.3, abs=0.07)
    # Audio after stop is refused; a new start begins a new session.
    await t.audio(0.2)
    assert [x["code"] for x in t.take()] == [m.AUDIO_AFTER_STOP]  # once, not per frame
    await t.start(language="en")
    assert t.take() == [m.session_started()] and t.streams[1].language == "en"
    await t.session.close()


async def test_audio_without_start_starts_a_session(executor: InferenceExecutor) -> None:
    t = Harness(executor)
    await t.audio(1.5, speed=10)
    await t.wait_for("partial")
    await t.start()
    await t.stop()
    types = t.types()
    assert types[0] == "session_started" and types[1] == "partial"
    assert t.sent[types.index("error")]["code"] == m.SESSION_ACTIVE
    assert types[-2:] == ["final", "session_ended"]
    await t.session.close()


async def test_idle_end_lets_the_seed_asyncio_client_finish(executor: InferenceExecutor) -> None:
    t = Harness(executor, idle_end_s=0.5, feed_interval_s=0.5)
    await t.start()
    await asyncio.sleep(0.8)  # no audio yet: the idle end is not armed (getUserMedia may be slow)
    assert t.types() == ["session_started"]
    await t.audio(1.2)
    await t.wait_for("session_ended")
    assert t.types()[-2:] == ["final", "session_ended"]
    final = t.sent[-2]["text"]
    t.take()
    # The client's own stop, sent after it saw session_ended, gets the same answer again.
    await t.stop()
    assert t.take() == [m.final(final), m.session_ended()]
    await t.audio(0.1)
    assert t.take()[0]["code"] == m.AUDIO_AFTER_STOP
    await t.session.close()


async def test_audio_after_an_idle_end_starts_a_new_session(executor: InferenceExecutor) -> None:
    t = Harness(executor, idle_end_s=0.5, feed_interval_s=0.5)
    await t.audio(0.6, speed=10)
    await t.wait_for("session_ended")
    await t.audio(0.6, speed=10)
    await t.wait_for("partial", 2)
    await t.stop()
    assert t.types() == ["session_started", "partial", "final", "session_ended",
                         "session_started", "partial", "final", "session_ended"]
    assert len(t.streams) == 2 and t.session.sessions == 2
    await t.session.close()


@pytest.mark.parametrize("kind, payload, code", [
    ("text", "not json", m.INVALID_JSON),
    ("text", '{"command": "pause"}', m.UNKNOWN_COMMAND),
    ("text", '{"cmd": "start"}', m.INVALID_MESSAGE),
    ("text", '{"command": "stop"}', m.NO_SESSION),
    ("binary", b"\x01\x02\x03", m.INVALID_AUDIO),
    ("binary", b"\x89PNG\r\n\x1a\n" + bytes(200), m.NOT_AUDIO),
    ("binary", json.dumps({"command": "start", "pad": "x" * 100}).encode(), m.NOT_AUDIO),
])
async def test_bad_input_is_an_error_and_the_session_goes_on(
        executor: InferenceExecutor, kind: str, payload: Any, code: str) -> None:
    t = Harness(executor)
    for when in ("before", "during"):
        if when == "during":
            await t.start()
            await t.audio(1.1)
            t.take()
        if kind == "text":
            await t.session.on_text(payload)
        else:
            await t.session.on_binary(payload)
        got = t.take()
        if when == "during" and code == m.NO_SESSION:
            assert got[-1]["type"] == "session_ended"  # stop is not an error with a session
            continue
        assert got == [m.error(code, got[0]["message"])], got
        assert t.errors[-1] == code
    if code != m.NO_SESSION:
        await t.audio(1.1)
        await t.stop()
        assert t.types()[-2:] == ["final", "session_ended"]
    # A session never started from a bad first frame.
    assert len(t.streams) == 1
    await t.session.close()


async def test_binary_of_another_kind_mid_session(executor: InferenceExecutor) -> None:
    t = Harness(executor)
    await t.audio(0.5)
    await t.session.on_binary(h.container_chunks(np.zeros(8000, np.float32))[0][1])
    await t.session.on_binary(b"\x00" * 1023)
    codes = [x.get("code") for x in t.take() if x["type"] == "error"]
    assert codes == [m.NOT_AUDIO, m.INVALID_AUDIO]
    await t.session.close()


async def test_engine_failure_is_reported_and_ends_the_session(executor: InferenceExecutor) -> None:
    t = Harness(executor, feed_interval_s=0.5)
    t.stream_args = {"fail_after": 1}
    await t.start()
    await t.audio(2.5, speed=10)
    await t.wait_for("session_ended")
    msgs = t.take()
    types = [x["type"] for x in msgs]
    # engine_error, then final (what was recognised) and session_ended; the audio the client
    # went on sending is refused once.
    assert types == ["session_started", "partial", "error", "final", "session_ended", "error"]
    assert msgs[2]["code"] == m.ENGINE_ERROR and msgs[5]["code"] == m.AUDIO_AFTER_STOP
    assert msgs[3]["text"] == "u1w1"
    await t.audio(0.2)
    assert t.take() == []
    await t.stop()  # a stop answered as if the session ended now
    assert t.types() == ["final", "session_ended"]
    t.take()
    t.stream_args = {}
    await t.start()
    await t.audio(1.2, speed=10)
    await t.stop()
    assert t.types()[0] == "session_started" and t.types()[-2:] == ["final", "session_ended"]
    await t.session.close()


async def test_container_session_and_disconnect_frees_everything(executor: InferenceExecutor) -> None:
    t = Harness(executor, feed_interval_s=0.5)
    speech = h.clip_audio(h.CLIPS[0])
    chunks = h.container_chunks(speech, "webm")
    for _, data in chunks[:40]:
        await t.session.on_binary(data)
        await asyncio.sleep(0.005)
    await t.wait_for("partial")
    assert t.session.input_format == "matroska" and t.types()[0] == "session_started"
    assert "partial" in t.types()
    assert [x for x in threading.enumerate() if x.name.startswith("asrhub-container-")]
    pump_task = t.session._pump._task  # type: ignore[union-attr]
    await t.session.close()
    assert pump_task.done() and t.session.state is State.CLOSED
    for _ in range(200):
        if not [x for x in threading.enumerate() if x.name.startswith("asrhub-container-")]:
            break
        await asyncio.sleep(0.01)
    assert not [x for x in threading.enumerate() if x.name.startswith("asrhub-container-")]
    assert t.session.audio_seconds > 3
    await t.session.on_binary(chunks[41][1])  # ignored once closed
    await t.session.on_text('{"command": "stop"}')
    assert "final" not in t.types()


async def test_whole_container_stream_is_recognised_on_stop(executor: InferenceExecutor) -> None:
    t = Harness(executor, feed_interval_s=1.0)
    speech = h.clip_audio(h.CLIPS[1])
    await t.start()
    for _, data in h.container_chunks(speech, "ogg"):
        await t.session.on_binary(data)
    await t.stop()
    assert t.types()[-2:] == ["final", "session_ended"]
    assert sum(t.streams[0].accepted) == pytest.approx(len(speech), abs=200)


async def test_backpressure_instead_of_unbounded_backlog(executor: InferenceExecutor) -> None:
    t = Harness(executor, feed_interval_s=0.5, max_backlog_s=1.0)
    t.stream_args = {"delay": 0.15}  # ~3x faster than real time, slower than we send
    await t.start()
    started = time.monotonic()
    waits = []
    for _, data in h.pcm_chunks(np.zeros(6 * 16000, np.float32) + 0.01, 4000):
        before = time.monotonic()
        await t.session.on_binary(data)
        waits.append(time.monotonic() - before)
        assert t.session._pump.backlog_seconds <= 1.0 + 0.5  # type: ignore[union-attr]
    elapsed = time.monotonic() - started
    await t.stop()
    assert m.BACKLOG_FULL not in t.errors and "error" not in t.types()
    assert max(waits) > 0.05 and elapsed > 0.8  # the reader was held back
    assert sum(t.streams[0].accepted) == 6 * 16000
    await t.session.close()

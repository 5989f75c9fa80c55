"""session.py driven with plain messages: lists of PCM frames and calls, no sockets. The
engines are the real ones (Silero VAD, Whisper tiny.en) in a real inference executor; clients
are :class:`ListPeer` objects that keep what they are sent."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from asrhub.engine import ModelNotAvailable
from asrhub.executor import InferenceExecutor
from asrhub.testing import make_hub, wer
from asrhub_plugins.session_broadcast.messages import ErrorCode, ProtocolError
from asrhub_plugins.session_broadcast.pipeline import Engines
from asrhub_plugins.session_broadcast.session import BroadcastSession, SessionRegistry, State
from asrhub_plugins.session_broadcast.settings import BroadcastSettings

FRAME = 3200  # the seed sender's chunk


class ListPeer:
    """A client that keeps every message. With ``capacity`` it behaves like a connection whose
    bounded outbox fills because the client stopped reading: one message too many closes it."""

    def __init__(self, capacity: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.capacity = capacity

    def send_json(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if self.capacity is not None and len(self.messages) >= self.capacity:
            self.closed, self.close_code = True, 1008
            self.close_reason = "client too slow: outbound queue full"
            return
        self.messages.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed, self.close_code, self.close_reason = True, code, reason

    @property
    def results(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "asr" in m]


@pytest.fixture(scope="module")
def engines() -> Engines:
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}}, only=[])
    return Engines(vad=hub.engine_sync("vad"), asr=hub.engine_sync("asr"))


@pytest.fixture
async def executor():
    pool = InferenceExecutor(workers=2, max_pending=16)
    yield pool
    await pool.shutdown()


def make_session(engines: Engines, executor: InferenceExecutor, **settings: Any) -> BroadcastSession:
    async def load() -> Engines:
        return engines

    return BroadcastSession("s1", BroadcastSettings(**settings), load_engines=load, executor=executor)


def frames(path) -> list[np.ndarray]:
    audio, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    return [audio[i:i + FRAME] for i in range(0, len(audio), FRAME)]


async def test_a_whole_session(engines, executor, recordings):
    session = make_session(engines, executor)
    early, stuck, sender, late = ListPeer(), ListPeer(capacity=1), ListPeer(), ListPeer()
    session.add_receiver(early)
    session.add_receiver(stuck)
    assert session.state is State.WAITING
    session.attach_sender(sender)
    assert session.state is State.LIVE
    with pytest.raises(ProtocolError) as err:
        session.attach_sender(ListPeer())
    assert err.value.code is ErrorCode.SENDER_EXISTS

    for frame in frames(recordings["three"]):
        session.feed(frame)
        await asyncio.sleep(0.01)
        if early.results and late not in session.receivers:
            session.add_receiver(late)  # joins during the session
    session.end_of_audio("sender sent close")
    assert session.state is State.FINISHING
    with pytest.raises(ProtocolError) as err:
        session.feed(np.zeros(160, np.float32))
    assert err.value.code is ErrorCode.SESSION_CLOSED
    with pytest.raises(ProtocolError) as err:
        session.attach_sender(ListPeer())
    assert err.value.code is ErrorCode.SENDER_EXISTS and "finishing" in err.value.message
    await asyncio.wait_for(session.wait_closed(), 60)
    assert session.state is State.CLOSED

    texts = [r["asr"] for r in early.results]
    assert len(texts) == 3, texts
    for text, reference in zip(texts, recordings["three_texts"], strict=True):
        assert wer(reference, text) < 0.35, (reference, text)
    # everybody saw the same results in the same order; the speaker is the documented unknown
    assert sender.results == early.results
    assert all(r["spk"] == {"speaker_id": "unknown", "speaker_name": "unknown", "score": 0.0}
               for r in early.results)
    assert late.results and late.results == early.results[-len(late.results):]
    assert len(late.results) < 3
    # the stuck client was dropped after its one message, the others did not notice
    assert stuck.messages == early.results[:1] and stuck.close_code == 1008
    assert stuck not in session.receivers
    # the sender's last message is the acknowledgement, then everybody is closed normally
    assert sender.messages[-1] == {"type": "closed", "session_id": "s1", "results": 3,
                                   "audio_s": pytest.approx(session.audio_seconds, abs=1e-3),
                                   "reason": "sender sent close"}
    assert (sender.close_code, sender.close_reason) == (1000, "session closed")
    assert (early.close_code, early.close_reason) == (1000, "session ended")
    assert session.results == 3 and session.segments == 3


async def test_sender_gone_without_close_still_delivers(engines, executor, recordings):
    session = make_session(engines, executor)
    receiver, sender = ListPeer(), ListPeer()
    session.add_receiver(receiver)
    session.attach_sender(sender)
    for frame in frames(recordings["short"]):
        session.feed(frame)
    sender.closed = True  # the socket went away
    session.end_of_audio("sender disconnected")
    await asyncio.wait_for(session.wait_closed(), 30)
    assert len(receiver.results) == 1
    assert wer(recordings["short_text"], receiver.results[0]["asr"]) < 0.3
    assert sender.messages == [] and receiver.close_code == 1000


async def test_backlog_is_bounded(engines, executor):
    session = make_session(engines, executor, max_backlog_s=2.0, max_segment_s=2.0)
    session.attach_sender(ListPeer())
    session.feed(np.zeros(16000, np.float32))
    with pytest.raises(ProtocolError) as err:
        session.feed(np.zeros(24000, np.float32))
    assert err.value.code is ErrorCode.BACKLOG_FULL
    session.end_of_audio("backlog full")
    await asyncio.wait_for(session.wait_closed(), 30)


async def test_engines_that_cannot_load_end_the_session_cleanly(executor):
    async def broken() -> Engines:
        raise ModelNotAvailable("no model here")

    session = BroadcastSession("s2", BroadcastSettings(), load_engines=broken, executor=executor)
    receiver, sender = ListPeer(), ListPeer()
    session.add_receiver(receiver)
    session.attach_sender(sender)
    session.feed(np.zeros(3200, np.float32))
    await asyncio.wait_for(session.wait_closed(), 10)
    assert sender.messages[0]["type"] == "error" and sender.messages[0]["code"] == "recognition_failed"
    assert sender.messages[-1]["type"] == "closed"
    assert receiver.messages == [] and receiver.close_code == 1000


async def test_registry_forgets_ended_sessions(engines, executor):
    async def load() -> Engines:
        return engines

    registry = SessionRegistry(BroadcastSettings(max_sessions=2, max_receivers=1), load_engines=load,
                               executor=lambda: executor)
    first = registry.get_or_create("a")
    assert registry.get_or_create("a") is first
    receiver = ListPeer()
    first.add_receiver(receiver)
    with pytest.raises(ProtocolError) as err:
        first.add_receiver(ListPeer())
    assert err.value.code is ErrorCode.TOO_MANY_RECEIVERS
    registry.get_or_create("b")
    with pytest.raises(ProtocolError) as err:
        registry.get_or_create("c")
    assert err.value.code is ErrorCode.TOO_MANY_SESSIONS
    # a session nobody sends to ends when its last receiver leaves; the id can be used again
    first.remove_receiver(receiver)
    assert first.state is State.CLOSED and "a" not in registry.sessions
    assert registry.get_or_create("a") is not first
    with pytest.raises(ProtocolError) as err:
        first.add_receiver(ListPeer())
    assert err.value.code is ErrorCode.SESSION_CLOSED
    await registry.shutdown()
    assert registry.sessions == {}

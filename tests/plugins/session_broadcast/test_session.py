"""session.py driven with plain messages: lists of PCM frames and calls, no sockets. The
engines are the hub's real ones (Silero VAD, Whisper tiny.en) in a real inference executor;
clients are the kit's own channels writing into lists (:class:`ListChannel`)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf

from asrhub.protocol import ProtocolError
from asrhub.testing import make_hub, wer
from asrhub_plugins.session_broadcast.messages import ErrorCode
from asrhub_plugins.session_broadcast.session import BroadcastSession, SessionRegistry, State
from asrhub_plugins.session_broadcast.settings import BroadcastSettings

from .conftest import CLIPS, RATE, ListChannel, context, load

pytestmark = pytest.mark.asyncio(loop_scope="module")
FRAME = 3200  # the seed sender's chunk


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub():
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {"session_broadcast": {"identify_speakers": False}}},
                   only=["session_broadcast"])
    hub.make_executor()
    yield hub
    await hub.executor.shutdown()
    hub.unload_engines()


def make_session(hub, session_id: str = "s1", **settings: Any) -> BroadcastSession:
    config = dataclasses.replace(BroadcastSettings(identify_speakers=False), **settings)
    return BroadcastSession(session_id, config, context(hub, config))


def peer(session: BroadcastSession, **kwargs: Any) -> ListChannel:
    return ListChannel(session.ctx, **kwargs)


def frames(path) -> list[np.ndarray]:
    audio, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    return [audio[i:i + FRAME] for i in range(0, len(audio), FRAME)]


@pytest.mark.slow
async def test_a_whole_session(hub, recordings):
    session = make_session(hub)
    early, stuck, sender, late = peer(session), peer(session, stuck=True), peer(session), peer(session)
    session.add_receiver(early)
    session.add_receiver(stuck)
    assert session.state is State.WAITING
    session.attach_sender(sender)
    assert session.state is State.LIVE
    with pytest.raises(ProtocolError) as err:
        session.attach_sender(peer(session))
    assert err.value.code is ErrorCode.SENDER_EXISTS and err.value.fatal

    # The late receiver joins once the first result is out, in the pause before the second
    # sentence (its audio not yet sent): it gets exactly the results from then on.
    pause = int((0.5 + len(load(CLIPS[0])) / RATE + 0.8) * RATE)
    sent = 0
    for frame in frames(recordings["three"]):
        session.feed(frame)
        sent += len(frame)
        await asyncio.sleep(0.005)
        if sent >= pause and late not in session.receivers:
            for _ in range(3000):  # bounded: 30 s
                if early.results:
                    break
                await asyncio.sleep(0.01)
            session.add_receiver(late)
    session.end_of_audio("sender sent close")
    assert session.state is State.FINISHING
    with pytest.raises(ProtocolError) as err:
        session.feed(np.zeros(160, np.float32))
    assert err.value.code is ErrorCode.SESSION_CLOSED
    with pytest.raises(ProtocolError) as err:
        session.attach_sender(peer(session))
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
    assert len(late.results) == 2
    # the stuck client was dropped once its outbox (one message) overflowed; nobody noticed
    assert stuck.messages == [] and stuck.close_code == 1008
    assert stuck.close_reason == "client too slow: outbound queue full"
    assert stuck.closed and stuck.close_code == 1008
    # the sender's last message is the acknowledgement, then everybody is closed normally
    assert sender.messages[-1] == {"type": "closed", "session_id": "s1", "results": 3,
                                   "audio_s": pytest.approx(session.audio_seconds, abs=1e-3),
                                   "reason": "sender sent close"}
    assert (sender.close_code, sender.close_reason) == (1000, "session closed")
    assert (early.close_code, early.close_reason) == (1000, "session ended")
    assert session.results == 3 and session.segments == 3


async def test_sender_gone_without_close_still_delivers(hub, recordings):
    session = make_session(hub)
    receiver, sender = peer(session), peer(session)
    session.add_receiver(receiver)
    session.attach_sender(sender)
    for frame in frames(recordings["short"]):
        session.feed(frame)
    await sender.close()  # the socket went away
    session.end_of_audio("sender disconnected")
    await asyncio.wait_for(session.wait_closed(), 30)
    assert len(receiver.results) == 1
    assert wer(recordings["short_text"], receiver.results[0]["asr"]) < 0.3
    assert sender.messages == [] and receiver.close_code == 1000


async def test_backlog_is_bounded(hub):
    session = make_session(hub, max_backlog_s=2.0, max_segment_s=2.0)
    session.attach_sender(peer(session))
    session.feed(np.zeros(16000, np.float32))
    with pytest.raises(ProtocolError) as err:
        session.feed(np.zeros(24000, np.float32))
    assert err.value.code is ErrorCode.BACKLOG_FULL
    session.end_of_audio("backlog full")
    await asyncio.wait_for(session.wait_closed(), 30)


async def test_engines_that_cannot_load_end_the_session_cleanly(tmp_path):
    broken = make_hub({"engines": {"whisper": {"model": str(tmp_path / "no-such-model")}},
                       "protocols": {"session_broadcast": {"identify_speakers": False}}},
                      only=["session_broadcast"])
    broken.make_executor()
    try:
        session = make_session(broken, "s2")
        receiver, sender = peer(session), peer(session)
        session.add_receiver(receiver)
        session.attach_sender(sender)
        session.feed(np.zeros(3200, np.float32))
        await session.wait_closed(30)
        assert sender.messages[0]["type"] == "error" and sender.messages[0]["code"] == "recognition_failed"
        assert sender.messages[-1]["type"] == "closed"
        assert receiver.messages == [] and receiver.close_code == 1000
        assert broken.counters["session_broadcast"].errors["recognition_failed"] == 1
    finally:
        await broken.executor.shutdown()


async def test_registry_forgets_ended_sessions(hub):
    settings = BroadcastSettings(max_sessions=1, max_receivers=1, identify_speakers=False)
    registry = SessionRegistry(context(hub, settings))
    first = registry.get_or_create("a")
    assert registry.get_or_create("a") is first
    receiver = ListChannel(registry.ctx)
    first.add_receiver(receiver)
    with pytest.raises(ProtocolError) as err:
        first.add_receiver(ListChannel(registry.ctx))
    assert err.value.code is ErrorCode.TOO_MANY_RECEIVERS
    # Sessions with receivers only do not count against max_sessions (issue 18): a sender
    # still gets one; a second session with a sender is over the limit.
    waiting = [registry.get_or_create(f"r{i}") for i in range(5)]
    for session in waiting:
        session.add_receiver(ListChannel(registry.ctx))
    live = registry.get_or_create("b")
    registry.attach_sender(live, ListChannel(registry.ctx))
    with pytest.raises(ProtocolError) as err:
        registry.attach_sender(registry.get_or_create("c"), ListChannel(registry.ctx))
    assert err.value.code is ErrorCode.TOO_MANY_SESSIONS and err.value.close_code == 1013
    # a session nobody sends to ends when its last receiver leaves; the id can be used again
    first.remove_receiver(receiver)
    assert first.state is State.CLOSED and "a" not in registry.sessions
    assert registry.get_or_create("a") is not first
    with pytest.raises(ProtocolError) as err:
        first.add_receiver(ListChannel(registry.ctx))
    assert err.value.code is ErrorCode.SESSION_CLOSED
    await registry.shutdown()
    assert registry.sessions == {}

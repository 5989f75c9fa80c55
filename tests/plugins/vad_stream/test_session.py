"""session.py driven with plain lists of messages: no socket, real engines (Silero, tiny.en)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import pytest_asyncio

from asrhub.hub import Hub
from asrhub.protocol import ANONYMOUS, CloseInfo, Credential, token_scope
from asrhub.testing import RecordingChannel, make_hub, wer
from asrhub_plugins.vad_stream.messages import CODES, error_message
from asrhub_plugins.vad_stream.session import Mode, VadStreamSession, may_overwrite
from asrhub_plugins.vad_stream.settings import VadStreamSettings

from .conftest import (
    CLIP_AMIABLE,
    CLIP_GO,
    CLIP_NOT_ILL,
    ENGINES,
    chunks,
    command,
    context,
    pcm16,
    silence,
    transcript,
    utterance,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory):
    """A hub without a server: its executor and engines, loaded once for the module."""
    state = tmp_path_factory.mktemp("vad-stream-session-state")
    hub = make_hub({"engines": ENGINES, "server": {"state_dir": str(state)}}, only=["vad_stream"])
    hub.make_executor()
    yield hub
    await hub.executor.shutdown()
    hub.unload_engines()


class Driver:
    """One session on the shared :class:`~asrhub.testing.RecordingChannel`, fed a list of
    messages as the kit's receive loop hands them over (what a handler raises becomes the
    seed's error, mapped as the core maps it); ``out`` is everything the session sent."""

    def __init__(self, hub: Hub, **overrides: Any) -> None:
        self.settings = dataclasses.replace(VadStreamSettings(), **overrides)
        self.ctx = context(hub, self.settings)

    @property
    def out(self) -> list[dict]:
        return self.channel.sent

    async def __aenter__(self) -> Driver:
        self.channel = RecordingChannel(error_message, codes=CODES, protocol="vad_stream")
        self.session = VadStreamSession(self.channel, self.ctx, self.settings)  # type: ignore[arg-type]
        await self.session.on_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.on_close(CloseInfo("client closed"))

    async def feed(self, *messages: str | bytes | list) -> list[dict]:
        """Feed messages (a list is fed item by item), wait for all work; return what was sent."""
        start = len(self.out)
        for message in messages:
            for item in (message if isinstance(message, list) else [message]):
                await self.channel.deliver(self.session, item)
        await self.session.drain()
        return self.out[start:]


def codes(sent: list[dict]) -> list[int]:
    return [m["code"] for m in sent if m["type"] == "error"]


def kinds(sent: list[dict]) -> list[str]:
    return [m.get("event") or m.get("state") or m["type"] for m in sent]


# ---------------------------------------------------------------------------- commands


async def test_ping_unknown_and_invalid(hub):
    async with Driver(hub) as d:
        assert await d.feed(command("ping")) == [{"type": "pong"}]
        assert codes(await d.feed("{oops", '["ping"]')) == [1, 1]
        assert codes(await d.feed(command("sing"), '{"user_id": "u"}')) == [3, 3]
        assert await d.feed(command("ping")) == [{"type": "pong"}]  # still usable


async def test_batch_errors_4_5_6_and_2(hub):
    async with Driver(hub, batch_max_s=1.0) as d:
        assert codes(await d.feed(command("batch_end"))) == [4]
        sent = await d.feed(command("batch_start"), command("batch_end"))
        assert kinds(sent) == ["receiving", "error"] and codes(sent) == [5]
        assert d.session.mode is Mode.STREAMING
        sent = await d.feed(command("batch_start"), silence(0.1), command("batch_end"))
        assert codes(sent) == [6] and "0.10s < 0.3s" in sent[-1]["message"]
        # Past batch_max_s the batch is cancelled (code 2); its remaining audio is dropped and
        # batch_end says there is no batch (code 4).
        sent = await d.feed(command("batch_start"), chunks(silence(1.5), 4096), command("batch_end"))
        assert codes(sent) == [2, 4]
        assert "exceeds maximum of 1s" in [m for m in sent if m["type"] == "error"][0]["message"]
        assert d.session.mode is Mode.STREAMING and not d.out[-1].get("event")
        assert codes(await d.feed(command("batch_end"))) == [4]


async def test_registration_errors_10_11_12_13_14(hub):
    async with Driver(hub) as d:
        assert codes(await d.feed(command("speaker_register_end"))) == [11]
        assert codes(await d.feed(command("speaker_register_start"))) == [10]
        assert codes(await d.feed(command("speaker_register_start", user_id=""))) == [10]
        assert d.session.mode is Mode.STREAMING
        sent = await d.feed(command("speaker_register_start", user_id="u1"), command("speaker_register_end"))
        assert sent[0]["state"] == "started" and "min 3s" in sent[0]["message"] and codes(sent) == [12]
        sent = await d.feed(command("speaker_register_start", user_id="u1"), silence(2.1),
                            command("speaker_register_end"))
        assert codes(sent) == [13] and sent[-1]["message"] == "Audio too short: 2.1s < 3s"
        # Four seconds with no voice in them: nothing to take a voiceprint of.
        sent = await d.feed(command("speaker_register_start", user_id="u1"), chunks(silence(4.0)),
                            command("speaker_register_end"))
        assert codes(sent) == [14]
        progress = [m for m in sent if m.get("state") == "receiving"]
        assert progress and progress[0]["received_bytes"] == 64000 and progress[0]["duration"] == 2.0
        assert codes(await d.feed(command("speaker_register_end"))) == [11]


async def test_verify_enable_without_user_is_15(hub):
    async with Driver(hub) as d:
        assert codes(await d.feed(command("speaker_verify_enable"))) == [15]
        assert codes(await d.feed(command("speaker_verify_enable", required=False))) == [15]
        assert d.session.verification is None
        assert (await d.feed(command("speaker_verify_disable")))[0]["type"] == "speaker_verify_disabled"


# ---------------------------------------------------------------------------- recognition


@pytest.mark.slow
async def test_streaming_gives_vad_events_then_one_result_per_segment(hub):
    async with Driver(hub) as d:
        # Each utterance is drained before the next, as a real-time sender would see it.
        sent = await d.feed(chunks(utterance(CLIP_NOT_ILL)))
        sent += await d.feed(chunks(utterance(CLIP_GO)))
    assert kinds(sent) == ["speech_start", "speech_end", "result"] * 2, kinds(sent)
    first, second = (m for m in sent if m["type"] == "result")
    assert (first["segment_id"], second["segment_id"]) == (1, 2)
    assert first["is_final"] is True and first["is_speeching"] is False
    assert wer(transcript(CLIP_NOT_ILL), first["text"]) <= 0.35, first["text"]
    assert wer(transcript(CLIP_GO), second["text"]) <= 0.25, second["text"]
    end = sent[1]
    assert end["samples"] / 16000 == pytest.approx(end["duration"], abs=1e-3)
    assert 2.0 <= end["duration"] <= 4.5


async def test_messages_cut_anywhere_give_the_same_result(hub):
    """Odd message sizes split samples across messages: the session joins them."""
    async with Driver(hub) as d:
        sent = await d.feed(chunks(utterance(CLIP_GO), 641))
    assert kinds(sent) == ["speech_start", "speech_end", "result"]
    assert wer(transcript(CLIP_GO), sent[-1]["text"]) <= 0.25


async def test_silence_and_quiet_noise_give_nothing(hub):
    import numpy as np

    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(16000 * 3) * 300).astype(np.int16).tobytes()  # about -40 dBFS
    async with Driver(hub) as d:
        assert await d.feed(chunks(silence(3.0) + hiss + silence(1.0))) == []


async def test_energy_filter_drops_a_segment_after_its_vad_events(hub):
    """A segment that fails a quality filter still gets its VAD events, but no result."""
    async with Driver(hub, energy_threshold=0.5) as d:
        sent = await d.feed(chunks(utterance(CLIP_GO)))
    assert kinds(sent) == ["speech_start", "speech_end"]
    assert d.session.stats["segments_filtered"] == 1


async def test_min_text_length_filter(hub):
    async with Driver(hub, min_text_length=200) as d:
        sent = await d.feed(chunks(utterance(CLIP_GO)))
    assert kinds(sent) == ["speech_start", "speech_end"]
    assert d.session.stats["texts_filtered"] == 1


async def test_batch_mode_recognises_the_whole_audio_without_vad(hub):
    audio = pcm16(CLIP_NOT_ILL) + silence(0.4) + pcm16(CLIP_AMIABLE)
    async with Driver(hub) as d:
        sent = await d.feed(command("batch_start"), chunks(audio, 4096), command("batch_end"))
    assert [m["type"] for m in sent if m["type"] not in ("batch_progress",)] == ["batch_result"]
    states = [m["state"] for m in sent if m["type"] == "batch_progress"]
    assert states[0] == "receiving" and states[-2:] == ["recognizing", "complete"]
    received = [m["received_bytes"] for m in sent if "received_bytes" in m]
    assert received and received == sorted(received) and all(r >= 64000 for r in received)
    result = next(m for m in sent if m["type"] == "batch_result")
    assert result["samples"] == len(audio) // 2 and result["duration"] == round(len(audio) / 32000, 3)
    reference = transcript(CLIP_NOT_ILL) + " " + transcript(CLIP_AMIABLE)
    assert wer(reference, result["text"]) <= 0.3, result["text"]
    assert not any(m["type"] == "vad" for m in sent)  # batch audio never reaches the VAD


async def test_batch_at_8khz_is_resampled(hub):
    import numpy as np

    from asrhub.audio import resample

    audio = np.frombuffer(pcm16(CLIP_GO), np.int16).astype(np.float32) / 32768
    low = (resample(audio, 16000, 8000) * 32767).astype(np.int16).tobytes()
    async with Driver(hub) as d:
        sent = await d.feed(command("batch_start", sample_rate=8000), low, command("batch_end"))
    result = next(m for m in sent if m["type"] == "batch_result")
    assert result["samples"] == len(low) // 2 and result["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert wer(transcript(CLIP_GO), result["text"]) <= 0.25, result["text"]


async def test_engine_failure_is_code_2_and_the_session_goes_on(hub):
    """tiny.en cannot do Mandarin: the engine refuses, the client gets code 2."""
    async with Driver(hub) as d:
        sent = await d.feed(command("batch_start", language="中文"), pcm16(CLIP_GO), command("batch_end"))
        assert codes(sent) == [2] and "Recognition failed" in sent[-1]["message"]
        sent = await d.feed(chunks(utterance(CLIP_GO)))
        assert kinds(sent) == ["speech_start", "speech_end", "result"]


async def test_reset_cancels_a_batch_and_restarts_numbering(hub):
    async with Driver(hub) as d:
        await d.feed(chunks(utterance(CLIP_GO)))
        assert d.session.segment_id == 1
        sent = await d.feed(command("batch_start"), pcm16(CLIP_GO), command("reset"))
        assert sent[-1] == {"type": "reset", "message": "State reset successfully"}
        assert codes(await d.feed(command("batch_end"))) == [4]
        sent = await d.feed(chunks(utterance(CLIP_GO)))
        assert [m["segment_id"] for m in sent if m["type"] == "result"] == [1]


async def test_leaving_streaming_mid_speech_closes_the_segment(hub):
    half = pcm16(CLIP_NOT_ILL)[: 16000 * 2 * 2]
    async with Driver(hub) as d:
        sent = await d.feed(silence(0.5), chunks(half), command("batch_start"))
    assert kinds(sent)[:3] == ["receiving", "speech_start", "speech_end"] or \
        kinds(sent)[:3] == ["speech_start", "receiving", "speech_end"]
    assert any(m["type"] == "result" for m in sent)


async def test_streaming_backlog_is_bounded(hub):
    async with Driver(hub, max_backlog_s=1.0) as d:
        for _ in range(3):  # queued at once: the VAD task gets no turn in between
            await d.channel.deliver(d.session, silence(0.4))
        await d.session.drain()
        assert codes(d.out) == [2] and "backlog" in d.out[0]["message"]
        assert d.session.audio_seconds == pytest.approx(0.8)
        assert await d.feed(command("ping")) == [{"type": "pong"}]


@pytest.mark.slow
async def test_noise_suppression_when_enabled(hub):
    """NS_ENABLED: streaming audio goes through the denoiser's stream before the VAD, batch
    audio through its whole-recording path; speech still comes out as text."""
    async with Driver(hub, ns_enabled=True, ns_engine="rnnoise") as d:
        sent = await d.feed(chunks(utterance(CLIP_GO)))
        assert d.session._denoise is not None
        assert kinds(sent) == ["speech_start", "speech_end", "result"]
        assert wer(transcript(CLIP_GO), sent[-1]["text"]) <= 0.25, sent[-1]["text"]
        sent = await d.feed(command("batch_start"), pcm16(CLIP_NOT_ILL), command("batch_end"))
        result = next(m for m in sent if m["type"] == "batch_result")
        assert wer(transcript(CLIP_NOT_ILL), result["text"]) <= 0.35, result["text"]
    assert hub.loaded_engine("denoise", "rnnoise") is not None
    async with Driver(hub) as d:  # off by default, as in the seed
        await d.feed(chunks(utterance(CLIP_GO)))
        assert d.session._denoise is None


# ---------------------------------------------------------------------------- voiceprints (issue 18)


def register(user_id: str) -> list:
    from .conftest import SPK1_ENROLL

    return [command("speaker_register_start", user_id=user_id), chunks(pcm16(SPK1_ENROLL), 3200),
            command("speaker_register_end")]


def last_outcome(sent: list[dict]) -> dict:
    return [m for m in sent if m["type"] in ("speaker_register_result", "error")][-1]


@pytest.mark.slow
async def test_an_existing_voiceprint_is_only_overwritten_as_configured(hub):
    t1, t2 = Credential(token_scope("t1")), Credential(token_scope("t2"))
    admin = Credential(token_scope("adm"), admin=True)
    async with Driver(hub) as owner:
        assert last_outcome(await owner.feed(*register("owner")))["success"] is True
        # the connection that registered it may register it again (a retry)
        assert last_outcome(await owner.feed(*register("owner")))["success"] is True
    async with Driver(hub) as other:  # anonymous (no token on this listener): refused
        sent = await other.feed(command("speaker_register_start", user_id="owner"))
        assert codes(sent) == [2] and "already registered" in sent[-1]["message"], sent
        assert other.session.mode is Mode.STREAMING
    async with Driver(hub) as holder:  # a token: not the owner of an anonymous voiceprint
        holder.channel.credential = t1
        assert codes(await holder.feed(command("speaker_register_start", user_id="owner"))) == [2]
    async with Driver(hub, speaker_overwrite="always") as anyone:  # the seed's behaviour
        anyone.channel.credential = t1
        assert last_outcome(await anyone.feed(*register("owner")))["success"] is True
    assert (await hub.voiceprints()).get("owner").owner == t1.scope  # the writer's now
    async with Driver(hub) as same_token:  # another connection presenting t1: its owner
        same_token.channel.credential = t1
        assert last_outcome(await same_token.feed(*register("owner")))["success"] is True
    async with Driver(hub, speaker_overwrite="token") as other_token:  # the old name of "owner"
        other_token.channel.credential = t2
        assert codes(await other_token.feed(command("speaker_register_start", user_id="owner"))) == [2]
    async with Driver(hub) as admin_client:  # the admin re-enrols it; the owner stays
        admin_client.channel.credential = admin
        assert last_outcome(await admin_client.feed(*register("owner")))["success"] is True
    assert (await hub.voiceprints()).get("owner").owner == t1.scope
    async with Driver(hub, speaker_overwrite="never") as nobody:
        nobody.channel.credential = admin
        assert codes(await nobody.feed(command("speaker_register_start", user_id="owner"))) == [2]


async def test_may_overwrite_rules():
    t1, t2 = Credential("a" * 16), Credential("b" * 16)
    admin = Credential("c" * 16, admin=True)
    for mode in ("owner", "token"):
        assert may_overwrite(mode, t1.scope, t1, registered_here=False)
        assert not may_overwrite(mode, t1.scope, t2, registered_here=False)
        assert may_overwrite(mode, t1.scope, admin, registered_here=False)
        # no owner recorded: only the admin and the registering connection
        assert not may_overwrite(mode, "", ANONYMOUS, registered_here=False)
        assert may_overwrite(mode, "", ANONYMOUS, registered_here=True)
        assert may_overwrite(mode, "", admin, registered_here=False)
        # registered here, but since deleted and taken by another scope: no longer this one's
        assert not may_overwrite(mode, t2.scope, t1, registered_here=True)
        assert not may_overwrite(mode, t1.scope, ANONYMOUS, registered_here=True)
    assert may_overwrite("always", t1.scope, ANONYMOUS, registered_here=False)
    assert not may_overwrite("never", "", admin, registered_here=True)


@pytest.mark.slow
async def test_voiceprint_count_and_registration_rate_are_limited(hub):
    async with Driver(hub, speaker_max_voiceprints=1) as d:
        await d.feed(*register("first"))  # the store holds at least one id from here on
        sent = await d.feed(command("speaker_register_start", user_id="one-more"))
        assert codes(sent) == [2] and "store is full" in sent[-1]["message"]
    async with Driver(hub, speaker_registrations_per_minute=1) as d:
        assert last_outcome(await d.feed(*register("rate")))["success"] is True
        outcome = last_outcome(await d.feed(*register("rate")))
        assert outcome["code"] == 2 and "per minute" in outcome["message"]

"""``/v1/audio/*`` and ``/v1/models`` through the official ``openai`` SDK against a real hub."""

from __future__ import annotations

import re

import numpy as np
import openai
import pytest

from asrhub.testing import wer

from .conftest import MAX_WER, OTHER, READER, joined, reference, wav_bytes

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

LONG = joined(READER)  # 29.7 s: three pieces of at most 10 s in this hub


@pytest.fixture(scope="module")
def long_wav() -> bytes:
    return wav_bytes(LONG)


async def test_json_text_and_usage(client, long_wav) -> None:
    result = await client.audio.transcriptions.create(model="whisper-1",
                                                      file=("talk.wav", long_wav, "audio/wav"))
    assert wer(reference(READER), result.text) <= MAX_WER, result.text
    assert result.usage is not None and result.usage.type == "duration"
    assert abs(result.usage.seconds - len(LONG) / 16000) < 0.05


async def test_text_srt_vtt(client, long_wav) -> None:
    text = await client.audio.transcriptions.create(model="whisper-1", response_format="text",
                                                    file=("talk.wav", long_wav))
    assert isinstance(text, str) and wer(reference(READER), text) <= MAX_WER
    srt = await client.audio.transcriptions.create(model="whisper-1", response_format="srt",
                                                   file=("talk.wav", long_wav))
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+?)\n(?:\n|$)",
                      srt, flags=re.S)
    assert len(cues) >= 3 and [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    assert wer(reference(READER), " ".join(c[3] for c in cues)) <= MAX_WER
    assert cues[-1][2] > "00:00:20,000"  # timestamps of the last piece are file time
    vtt = await client.audio.transcriptions.create(model="whisper-1", response_format="vtt",
                                                   file=("talk.wav", long_wav))
    assert vtt.startswith("WEBVTT\n\n")
    assert len(re.findall(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", vtt)) == len(cues)


async def test_verbose_json_segments_and_words(client, long_wav) -> None:
    result = await client.audio.transcriptions.create(
        model="whisper-1", response_format="verbose_json", file=("talk.wav", long_wav),
        timestamp_granularities=["segment", "word"])
    assert result.language == "english" and abs(result.duration - len(LONG) / 16000) < 0.05
    assert wer(reference(READER), result.text) <= MAX_WER
    assert result.segments and result.words
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= result.duration + 0.01
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    words = [w.word for w in result.words]
    assert wer(reference(READER), " ".join(words)) <= MAX_WER
    assert all(w.start <= w.end for w in result.words)
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)
    # Word times are file times: "amiable himself" ends the last clip, in the last piece.
    assert result.words[-1].end > 25.0 and "himself" in result.words[-1].word.lower()
    # Words only: no segments.
    only_words = await client.audio.transcriptions.create(
        model="whisper-1", response_format="verbose_json", file=("talk.wav", long_wav),
        timestamp_granularities=["word"])
    assert only_words.words and not only_words.segments


async def test_diarized_json(client) -> None:
    audio = joined([READER[0], OTHER[0], READER[2], OTHER[1]], gap_s=1.0)
    result = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", response_format="diarized_json",
        file=("two.wav", wav_bytes(audio)))
    names = [READER[0], OTHER[0], READER[2], OTHER[1]]
    assert wer(reference(names), result.text) <= MAX_WER
    assert result.task == "transcribe" and result.segments
    assert all(s.type == "transcript.text.segment" and s.id for s in result.segments)
    assert result.segments[0].speaker == "A"
    speakers = {s.speaker for s in result.segments}
    assert speakers == {"A", "B"}, [(s.speaker, s.text) for s in result.segments]
    # The other speaker's sentences are B's; the reader's, A's.
    for seg in result.segments:
        other = wer(reference([OTHER[0]]), seg.text) < 0.5 or wer(reference([OTHER[1]]), seg.text) < 0.5
        assert seg.speaker == ("B" if other else "A"), (seg.speaker, seg.text)


async def test_diarized_json_known_speakers(client) -> None:
    import base64

    audio = joined([READER[0], OTHER[0], READER[2], OTHER[1]], gap_s=1.0)
    sample = "data:audio/wav;base64," + base64.b64encode(wav_bytes(joined([READER[3]]))).decode()
    guest = joined(["en/speechbrain_spk2_snt1.wav", "en/speechbrain_spk2_snt5.wav"])
    other = "data:audio/wav;base64," + base64.b64encode(wav_bytes(guest)).decode()
    result = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", response_format="diarized_json",
        file=("two.wav", wav_bytes(audio)), known_speaker_names=["reader", "guest"],
        known_speaker_references=[sample, other])
    labels = [s.speaker for s in result.segments]
    assert labels[0] == "reader" and "guest" in labels, labels


async def test_stream_deltas_then_done(client, long_wav) -> None:
    stream = await client.audio.transcriptions.create(model="whisper-1", stream=True,
                                                      file=("talk.wav", long_wav))
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2  # one per piece: the first arrived before the file was decoded
    assert "".join(deltas) == events[-1].text
    assert wer(reference(READER), events[-1].text) <= MAX_WER


async def test_models_list_and_retrieve(client) -> None:
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper"} <= set(ids)
    model = await client.models.retrieve("whisper-1")
    assert model.id == "whisper-1" and model.object == "model" and model.owned_by == "asrhub"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("gpt-5-turbo")
    assert info.value.code == "model_not_found"


async def test_unknown_model_names_the_available_ones(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(model="nope-1", file=("a.wav", wav_bytes(joined([READER[1]]))))
    assert info.value.status_code == 400 and info.value.param == "model"
    assert "whisper-1" in info.value.message and "gpt-4o-transcribe" in info.value.message


async def test_wrong_key(base_url) -> None:
    from openai import AsyncOpenAI

    bad = AsyncOpenAI(api_key="sk-wrong", base_url=base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        await bad.models.list()
    assert info.value.status_code == 401
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "invalid_api_key"


async def test_garbage_bytes_is_400(client) -> None:
    rng = np.random.default_rng(7)
    garbage = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", garbage))
    assert info.value.param == "file" and info.value.code == "invalid_file_format"
    assert "Traceback" not in info.value.message


async def test_bad_fields_are_400(client) -> None:
    wav = wav_bytes(joined([READER[1]]))
    cases = [dict(response_format="xml"), dict(temperature=3.0),
             dict(timestamp_granularities=["word"])]  # needs verbose_json
    for extra in cases:
        with pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), **extra)
        assert info.value.param in ("response_format", "temperature", "timestamp_granularities")
    with pytest.raises(openai.BadRequestError) as info:  # translations have no diarized_json
        await client.audio.translations.create(model="whisper-1", file=("a.wav", wav),
                                               response_format="diarized_json")  # type: ignore[arg-type]
    assert info.value.param == "response_format"


async def test_prompt_and_temperature_are_accepted(client) -> None:
    wav = wav_bytes(joined([READER[1]]))
    result = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav),
                                                      prompt="Sense and Sensibility.",
                                                      temperature=0.2, language="en")
    assert wer(reference([READER[1]]), result.text) <= MAX_WER


async def test_diarized_json_names_an_enrolled_voiceprint(client, server) -> None:
    import time

    from asrhub.engine import Voiceprint

    hub = server.hub
    speaker = await hub.speaker()
    store = await hub.voiceprints()
    enrol = joined([READER[3], READER[4]])
    embedding = await hub.executor.run(speaker.embed, enrol)
    await hub.executor.run(store.put, Voiceprint("reader-1", "Elinor", embedding, time.time(),
                                                 len(enrol) / 16000, speaker.name))
    audio = joined([READER[0], OTHER[0], READER[2], OTHER[1]], gap_s=1.0)
    result = await client.audio.transcriptions.create(
        model="whisper-1", response_format="diarized_json", file=("two.wav", wav_bytes(audio)),
        known_speaker_names=["Elinor"])
    labels = [s.speaker for s in result.segments]
    assert labels[0] == "Elinor" and set(labels) == {"Elinor", "A"}, labels
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(
            model="whisper-1", response_format="diarized_json", file=("two.wav", wav_bytes(audio)),
            known_speaker_names=["Nobody"])
    assert info.value.param == "known_speaker_names"


async def test_damage_further_into_the_file_is_400(client) -> None:
    import io

    import soundfile as sf

    audio = joined(READER[:3]).copy()
    audio[16000 * 12] = np.nan  # past the first piece
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(model="whisper-1", file=("nan.wav", buf.getvalue()))
    assert info.value.code == "invalid_file_format" and "NaN" in info.value.message
    stream = await client.audio.transcriptions.create(model="whisper-1", stream=True,
                                                      file=("nan.wav", buf.getvalue()))
    with pytest.raises(openai.APIError) as failed:
        async for _event in stream:
            pass
    assert "NaN" in failed.value.message


async def test_plain_http_errors_in_openai_shape(base_url) -> None:
    import aiohttp

    auth = {"Authorization": "Bearer sk-test-asrhub"}
    async with aiohttp.ClientSession(headers=auth) as http:
        cases = [("GET", "/audio/transcriptions", None, 405), ("GET", "/nope", None, 404),
                 ("POST", "/audio/transcriptions", {"json": {"model": "whisper-1"}}, 415),
                 ("POST", "/audio/transcriptions",
                  {"data": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
                  400),
                 ("GET", "/realtime", None, 426)]
        for method, path, kw, status in cases:
            async with http.request(method, base_url + path, **(kw or {})) as resp:
                body = await resp.json()
                assert resp.status == status, (path, body)
                assert set(body["error"]) == {"message", "type", "param", "code"}, body
                assert "Traceback" not in body["error"]["message"]


async def test_a_language_the_model_lacks_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:  # tiny.en is English only
        await client.audio.transcriptions.create(model="whisper-1", language="zh",
                                                 file=("a.wav", wav_bytes(joined([READER[1]]))))
    assert info.value.param == "language"

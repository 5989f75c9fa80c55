"""The parts without a server: form validation, response shapes, piece decoding, time mapping,
the Realtime schema and the core's cluster naming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from asrhub.audio import AudioError
from asrhub.diarize import name_clusters
from asrhub.engine import Segment, Transcript, Word
from asrhub.protocol import ProtocolError
from asrhub_plugins.openai_api import messages as m
from asrhub_plugins.openai_api import realtime_messages as rm
from asrhub_plugins.openai_api.pieces import PieceReader
from asrhub_plugins.openai_api.service import Stretch


def parse(task="transcribe", lists=None, **fields):
    return m.parse_request(task, {"model": "whisper-1", **fields}, lists or {})


def test_form_fields() -> None:
    req = parse(response_format="verbose_json", temperature="0.3", stream="true", language="en",
                lists={"timestamp_granularities": ["word", "segment", "word"]})
    assert req.granularities == ("word", "segment") and req.words and req.segments
    assert req.temperature == 0.3 and req.stream and req.language == "en"
    assert not parse().words and parse().segments
    assert m.field_name("timestamp_granularities[]") == "timestamp_granularities"


@pytest.mark.parametrize(("fields", "lists", "param"), [
    ({"model": ""}, {}, "model"),
    ({"response_format": "xml"}, {}, "response_format"),
    ({"temperature": "nan"}, {}, "temperature"),
    ({"temperature": "1.5"}, {}, "temperature"),
    ({"temperature": "hot"}, {}, "temperature"),
    ({"stream": "maybe"}, {}, "stream"),
    ({}, {"timestamp_granularities": ["word"]}, "timestamp_granularities"),
    ({"response_format": "verbose_json"}, {"timestamp_granularities": ["char"]}, "timestamp_granularities"),
    ({}, {"known_speaker_names": ["a"]}, "known_speaker_names"),
    ({"response_format": "diarized_json"}, {"known_speaker_names": ["a", "b", "c", "d", "e"]},
     "known_speaker_names"),
    ({"response_format": "diarized_json"}, {"known_speaker_references": ["data:,"]}, "known_speaker_names"),
])
def test_bad_fields_name_their_param(fields, lists, param) -> None:
    with pytest.raises(ProtocolError) as info:
        m.parse_request("transcribe", {"model": "whisper-1", **fields}, lists)
    assert info.value.param == param and info.value.status == 400


def test_translations_have_no_diarized_json() -> None:
    with pytest.raises(ProtocolError):
        parse("translate", response_format="diarized_json")


def test_data_urls() -> None:
    assert m.data_url_bytes("data:audio/wav;base64,UklGRg==", param="x") == b"RIFF"
    for bad in ("http://x/a.wav", "data:audio/wav,plain", "data:audio/wav;base64,***"):
        with pytest.raises(ProtocolError):
            m.data_url_bytes(bad, param="x")


def test_render_shapes() -> None:
    seg = Segment(1.0, 2.5, "hello there", [Word(1.0, 1.4, " hello"), Word(1.5, 2.5, " there")],
                  speaker="B", confidence=0.5)
    transcript = Transcript("hello there", "en", 3.0, [seg])
    body, ctype = m.render(parse(response_format="verbose_json",
                                 lists={"timestamp_granularities": ["word"]}), transcript)
    data = json.loads(body)
    assert ctype == "application/json" and data["language"] == "english" and data["task"] == "transcribe"
    assert data["words"] == [{"word": "hello", "start": 1.0, "end": 1.4},
                             {"word": "there", "start": 1.5, "end": 2.5}]
    assert "segments" not in data and data["usage"] == {"type": "duration", "seconds": 3.0}
    body, _ = m.render(parse(response_format="diarized_json"), transcript)
    diarized = json.loads(body)
    assert diarized["segments"][0] == {"type": "transcript.text.segment", "id": "seg_0",
                                       "start": 1.0, "end": 2.5, "text": "hello there", "speaker": "B"}
    assert m.render(parse(response_format="text"), transcript) == ("hello there\n", "text/plain")
    assert m.render(parse("translate"), transcript)[0] == '{"text": "hello there"}'


def test_speaker_labels_and_error_types() -> None:
    assert [m.speaker_label(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]
    assert m.error_type(401) == "authentication_error" and m.error_type(503) == "server_error"
    assert m.error_type(429) == "rate_limit_error" and m.error_type(413) == "invalid_request_error"


def test_stretch_maps_times_back_to_the_piece() -> None:
    piece = np.arange(10 * 16000, dtype=np.float32)
    stretch = Stretch.single(piece, 16000, 96000)
    assert len(stretch.audio) == 80000 and stretch.audio[0] == 16000
    assert stretch.original(0.5) == 1.5 and stretch.original(9.0) == 6.0  # clamped to its end
    placed = stretch.place(Segment(0.5, 1.5, " x ", [Word(1.1, 1.2, "x")]), piece_offset=16000 * 30)
    assert (placed.start, placed.end, placed.text) == (31.5, 32.5, "x")
    assert placed.words[0].start == pytest.approx(32.1)


def test_piece_reader_cuts_at_quiet_points(tmp_path) -> None:
    rng = np.random.default_rng(1)
    audio = rng.normal(0, 0.2, 44100 * 25).astype(np.float32)
    audio[44100 * 8:44100 * 8 + 4410] = 0  # a quiet 100 ms in the last third of the first piece
    path = tmp_path / "a.flac"
    sf.write(path, audio, 44100)
    reader = PieceReader(path, 10.0)
    pieces = []
    while (got := reader.next_piece()) is not None:
        pieces.append(got)
    reader.close()
    assert pieces[0][0] == 0 and abs(len(pieces[0][1]) / 16000 - 8.05) < 0.06
    assert all(len(p) <= 160000 for _, p in pieces)
    assert sum(len(p) for _, p in pieces) == reader.samples and abs(reader.samples - 25 * 16000) < 50
    assert [o for o, _ in pieces] == list(np.cumsum([0] + [len(p) for _, p in pieces[:-1]]))


def test_piece_reader_refuses_garbage(tmp_path) -> None:
    path = tmp_path / "x.mp3"
    path.write_bytes(bytes(range(256)) * 100)
    with pytest.raises(AudioError):
        PieceReader(path, 10.0).open()


def test_realtime_updates_in_both_layouts() -> None:
    config = rm.TranscriptionConfig()
    ga = rm.apply_update(config, {"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcmu"}, "turn_detection": None,
            "transcription": {"model": "gpt-4o-transcribe", "language": "de"}}}}})
    assert (ga.input_format, ga.turn_detection, ga.model, ga.language) == (
        "g711_ulaw", None, "gpt-4o-transcribe", "de")
    beta = rm.apply_update(config, {"type": "transcription_session.update", "session": {
        "input_audio_format": "g711_alaw", "turn_detection": {"type": "server_vad",
                                                              "silence_duration_ms": 800}}})
    assert beta.input_format == "g711_alaw" and beta.turn_detection["silence_duration_ms"] == 800
    assert rm.session_body("s", beta, "beta")["input_audio_format"] == "g711_alaw"
    assert rm.session_body("s", ga, "ga")["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    for bad in ({"type": "realtime"}, {"input_audio_format": "mp3"},
                {"turn_detection": {"type": "server_vad", "threshold": 2}},
                {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
                {"input_audio_transcription": {"language": 5}},
                # a lone surrogate reached the tokenizer (found by bench/fuzz.py)
                {"input_audio_transcription": {"prompt": "\ud800"}}):
        with pytest.raises(ProtocolError):
            rm.apply_update(config, {"type": "session.update", "session": bad})


def test_name_clusters_pairs_each_name_once() -> None:
    a, b = np.array([1, 0, 0], np.float32), np.array([0, 1, 0], np.float32)
    labels = [0, 1, 0]
    embeddings = {0: a, 1: b, 2: a * 0.9 + b * 0.1}
    assert name_clusters(labels, embeddings, {"ann": a, "bob": b}, 0.5) == {0: "ann", 1: "bob"}
    assert name_clusters(labels, embeddings, {"ann": a, "also-ann": a}, 0.5) == {0: "ann"} or \
        name_clusters(labels, embeddings, {"ann": a, "also-ann": a}, 0.5) == {0: "also-ann"}
    assert name_clusters(labels, embeddings, {"c": np.array([0, 0, 1], np.float32)}, 0.5) == {}


async def test_models_table_from_config() -> None:
    from asrhub.config import ConfigError
    from asrhub.testing import make_hub, running_server

    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {"openai_api": {"models": {"local-fast": "whisper", "whisper-1": ""}}}},
                   only=["openai_api"])
    async with running_server(hub) as srv:
        from asrhub_plugins.openai_api.service import SERVICE_KEY

        service = srv.contexts["openai_api"].app[SERVICE_KEY]
        assert service.model_table() == {"local-fast": "whisper", "whisper-1": "whisper",
                                         "whisper": "whisper"}
    bad = make_hub({"protocols": {"openai_api": {"models": {"x": "no-such-engine"}}}},
                   only=["openai_api"])
    with pytest.raises(ConfigError, match="no-such-engine"):
        async with running_server(bad):
            pass


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_g711_decoders_match_the_reference_codec() -> None:
    import audioop as ref  # deprecated, still in 3.11/3.12: the reference G.711 codec

    pcm = _pcm16(np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.8)
    for encode, decode in ((ref.lin2ulaw, rm.ulaw_to_float), (ref.lin2alaw, rm.alaw_to_float)):
        coded = encode(pcm, 2)
        expected = np.frombuffer(ref.ulaw2lin(coded, 2) if decode is rm.ulaw_to_float
                                 else ref.alaw2lin(coded, 2), "<i2") / 32768.0
        assert np.array_equal(decode(coded), expected.astype(np.float32))

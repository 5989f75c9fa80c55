"""The wire format (messages.py) and the append-only text pieces (pieces.py)."""

from __future__ import annotations

import json

import pytest

from asrhub.protocol import ProtocolError
from asrhub_plugins.funasr_runtime import messages as m
from asrhub_plugins.funasr_runtime.pieces import Increments, Joiner, units

# What FunASR's Python client sends first (record_from_scp), verbatim in shape.
CLIENT_FIRST = {"mode": "2pass", "chunk_size": [5, 10, 5], "chunk_interval": 10,
                "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 0, "audio_fs": 16000,
                "wav_name": "demo", "wav_format": "pcm", "is_speaking": True, "hotwords": "",
                "itn": True}


def test_client_first_message():
    message = m.parse_message(json.dumps(CLIENT_FIRST))
    assert message.is_speaking is True and message.is_end is False
    config = message.apply(m.InputConfig())
    assert (config.mode, config.wav_name, config.audio_fs, config.chunk_size) == (
        "2pass", "demo", 16000, (5, 10, 5))
    assert config.is_pcm and config.prompt is None and config.language is None


def test_defaults_unknown_keys_and_the_end():
    config = m.parse_message('{"is_speaking": true, "svs_lang": "zh", "x-vendor": 1}').apply(
        m.InputConfig())
    assert config.mode == "2pass" and config.wav_name == "microphone" and config.language == "zh"
    end = m.parse_message('{"is_speaking": false, "is_end": true}')
    assert end.changes == {} and end.is_speaking is False and end.is_end is True


@pytest.mark.parametrize("hotwords, expected", [
    ('{"阿里巴巴": 20, "通义实验室": 30}', {"阿里巴巴": 20, "通义实验室": 30}),
    ("阿里巴巴,通义实验室", {"阿里巴巴": 20, "通义实验室": 20}),  # the client's hotword file
    ({"Dashwood": "10"}, {"Dashwood": 10}),
    ("", {}),
])
def test_hotwords(hotwords, expected):
    assert m.parse_hotwords(hotwords) == expected


@pytest.mark.parametrize("message, code, fatal", [
    ("not json", m.BAD_MESSAGE, False),
    ("[]", m.BAD_MESSAGE, False),
    ('{"mode": "3pass"}', m.BAD_CONFIG, True),
    ('{"audio_fs": 44}', m.BAD_CONFIG, True),
    ('{"audio_fs": "x"}', m.BAD_MESSAGE, True),
    ('{"chunk_size": [5, 0, 5]}', m.BAD_CONFIG, True),
    ('{"chunk_size": "5,10"}', m.BAD_MESSAGE, True),
    ('{"wav_format": "../../etc"}', m.BAD_MESSAGE, True),
    ('{"hotwords": ["a"]}', m.BAD_MESSAGE, True),
    ('{"hotwords": "{\\"a\\": \\"heavy\\"}"}', m.BAD_CONFIG, True),
    ('{"is_speaking": 2}', m.BAD_MESSAGE, True),
    ('{"svs_lang": "klingon!"}', m.BAD_CONFIG, True),
    ('{"wav_name": "' + "x" * 300 + '"}', m.BAD_CONFIG, True),
    # a lone surrogate in a hotword reached the tokenizer (found by bench/fuzz.py)
    ('{"hotwords": "{\\"\\ud800\\": 20}"}', m.BAD_CONFIG, True),
    ('{"hotwords": "a,\\ud800"}', m.BAD_CONFIG, True),
    ('{"hotwords": {"\\ud800": 20}}', m.BAD_CONFIG, True),
    ('{"audio_fs": 1' + "0" * 60 + "}", m.BAD_MESSAGE, False),  # a huge integer is not JSON here
])
def test_bad_messages(message, code, fatal):
    with pytest.raises(ProtocolError) as caught:
        m.parse_message(message)
    assert caught.value.code == code and caught.value.fatal is fatal


def test_a_container_needs_offline_mode():
    message = m.parse_message('{"mode": "online", "wav_format": "mp3"}')
    with pytest.raises(ProtocolError, match="raw PCM"):
        message.apply(m.InputConfig())
    assert m.parse_message('{"mode": "offline", "wav_format": "MP3"}').apply(
        m.InputConfig()).wav_format == "mp3"


def test_results_and_envelopes():
    config = m.InputConfig(mode="offline", wav_name="a")
    assert m.result(config, "offline", "hi", is_final=True, timestamp=[[0, 120], [120, 300]]) == {
        "mode": "offline", "wav_name": "a", "text": "hi", "is_final": True,
        "timestamp": "[[0,120],[120,300]]"}
    assert m.acknowledgement(config, []) == {"mode": "offline", "wav_name": "a",
                                             "is_final": True, "is_end": True}
    assert m.acknowledgement(config, ["x", "y"])["error"] == "x; y"
    err = ProtocolError(m.BAD_AUDIO, "no", wav_name="a")
    assert m.error_envelope(err) == {"wav_name": "a", "is_final": False, "error": "no",
                                     "code": "bad_audio"}
    assert m.error_envelope(ProtocolError(m.BAD_CONFIG, "no", fatal=True))["is_end"] is True


def test_increments_send_agreed_words_then_the_rest():
    inc = Increments()
    assert inc.partial("he was") == ""  # nothing to agree with yet
    assert inc.partial("he was not an") == "he was"
    assert inc.partial("He was not an ill") == "not an"
    assert inc.partial("he wasn't a") == ""  # a revision of sent words: wait for the end
    assert inc.final("He was not an ill-disposed young man.") == "ill-disposed young man."
    assert inc.sent == [] and inc.partial("next") == ""


def test_increments_cjk_and_a_late_revision():
    inc = Increments()
    inc.partial("欢迎")
    assert inc.partial("欢迎大家") == "欢迎"
    # The final changed a sent character: the rest is aligned after the last agreement.
    assert inc.final("欢印大家来体验") == "大家来体验"


def test_joiner_spaces_only_between_latin_words():
    track = Joiner()
    assert [track.piece(p) for p in ("he was", "not", "他一定", "在家", "ok", "")] == [
        "he was", " not", "他一定", "在家", "ok", ""]
    assert units("he 他一定 ok.") == ["he", "他", "一", "定", "ok."]

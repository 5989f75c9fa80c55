"""The streaming STT wire format: command parsing, server messages, binary-frame checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asrhub_plugins.streaming_stt import messages as m


def test_commands() -> None:
    assert m.parse_command('{"command": "start"}') == m.Start()
    assert m.parse_command('{"command": "start", "language": "zh"}') == m.Start("zh")
    assert m.parse_command('{"command": "stop", "extra": 1}') == m.Stop()


@pytest.mark.parametrize("text, code", [
    ("not json", m.INVALID_JSON),
    ("[1, 2]", m.INVALID_JSON),
    ('"start"', m.INVALID_JSON),
    ("{}", m.INVALID_MESSAGE),
    ('{"command": 3}', m.INVALID_MESSAGE),
    ('{"command": "pause"}', m.UNKNOWN_COMMAND),
    ('{"command": "start", "language": "english please"}', m.INVALID_MESSAGE),
    ("[" * 100000, m.INVALID_JSON),
])
def test_bad_commands(text: str, code: str) -> None:
    with pytest.raises(m.ProtocolError) as info:
        m.parse_command(text)
    assert info.value.code == code and info.value.message


def test_server_messages_match_the_seed() -> None:
    assert m.connected() == {"type": "connected", "message": "已连接到流式 STT 服务", "mode": "streaming"}
    assert m.session_started() == {"type": "session_started"}
    assert m.partial("a b") == {"type": "partial", "text": "a b", "is_final": False}
    assert m.final("a b") == {"type": "final", "text": "a b", "is_final": True}
    assert m.session_ended() == {"type": "session_ended"}
    assert m.error("x", "y") == {"type": "error", "code": "x", "message": "y"}
    json.dumps(m.connected(), ensure_ascii=False)


def test_non_audio_frames_are_recognised_and_pcm_is_not() -> None:
    assert m.describe_non_audio(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100) == "a PNG image"
    assert "JSON" in (m.describe_non_audio(json.dumps({"command": "start", "pad": "x" * 80}).encode()) or "")
    assert m.describe_non_audio(b"hello world, " * 10) == "text"
    assert m.describe_non_audio(b"\x1f\x43\xb6\x75" + b"\x00" * 10) is not None
    rng = np.random.default_rng(0)
    for scale in (0.001, 0.1, 0.9):
        pcm = (rng.standard_normal(1024) * scale * 32767).clip(-32768, 32767).astype("<i2")
        assert m.describe_non_audio(pcm.tobytes()) is None
    assert m.describe_non_audio(np.zeros(1024, "<i2").tobytes()) is None
    assert m.describe_non_audio(b"ab") is None  # too short to tell


@pytest.mark.parametrize("section, fragment", [
    ({"max_outbox": 0}, "max_outbox"),  # a shared listener limit, checked by the kit's class
    ({"stop_grace_s": -0.1}, "stop_grace_s"),
    ({"feed_interval_s": 0}, "feed_interval_s"),
    ({"max_message_mb": 1}, "unknown key 'max_message_mb'"),
])
def test_settings_are_checked_like_every_listener(section, fragment) -> None:
    from asrhub.config import ConfigError
    from asrhub.testing import make_hub

    with pytest.raises(ConfigError, match=fragment):
        make_hub({"protocols": {"streaming_stt": section}}, only=["streaming_stt"])

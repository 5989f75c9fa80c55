"""The wire format alone (no server, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from asrhub_plugins.session_broadcast import messages as m


def test_mode_is_required_and_checked():
    assert m.parse_mode("sender") is m.Mode.SENDER
    assert m.parse_mode("receiver") is m.Mode.RECEIVER
    assert m.parse_mode(" Receiver ") is m.Mode.RECEIVER
    for bad in (None, "", "listener", "send"):
        with pytest.raises(m.ProtocolError) as err:
            m.parse_mode(bad)
        assert err.value.code is m.ErrorCode.INVALID_MODE
        assert "mode=sender" in err.value.message


def test_session_id():
    assert m.parse_session_id("4b6f-uuid") == "4b6f-uuid"
    for bad in ("", "   ", "x" * 300):
        with pytest.raises(m.ProtocolError) as err:
            m.parse_session_id(bad)
        assert err.value.code is m.ErrorCode.INVALID_SESSION_ID


def test_float32_audio_parsed_exactly():
    samples = np.array([0.0, 0.5, -0.25, 1.0], dtype="<f4")
    frame = m.parse_sender_audio(samples.tobytes())
    assert frame.pcm.dtype == np.float32
    np.testing.assert_array_equal(frame.pcm, samples)
    assert len(m.parse_sender_audio(b"").pcm) == 0


@pytest.mark.parametrize("data, fragment", [
    (b"\x00\x00\x80", "multiple of 4"),
    (np.array([0.1, np.nan], dtype="<f4").tobytes(), "NaN"),
    (np.array([0.1, np.inf], dtype="<f4").tobytes(), "NaN or infinite"),
    # int16 PCM sent by mistake: negative samples read as float32 are enormous
    (np.array([300, -1200, 800, -300], dtype="<i2").tobytes(), "16-bit integers"),
])
def test_bad_audio_is_a_clear_error(data, fragment):
    with pytest.raises(m.ProtocolError) as err:
        m.parse_sender_audio(data)
    assert err.value.code is m.ErrorCode.INVALID_AUDIO
    assert fragment in err.value.message


def test_only_close_is_a_valid_text():
    assert isinstance(m.parse_sender_text("close"), m.EndOfAudio)
    assert isinstance(m.parse_sender_text("CLOSE\n"), m.EndOfAudio)
    with pytest.raises(m.ProtocolError) as err:
        m.parse_sender_text('{"type": "start"}')
    assert err.value.code is m.ErrorCode.UNEXPECTED_TEXT


def test_result_has_the_seeds_shape():
    result = m.Result("hello world", m.Speaker("uuid-1", "Alice", 0.87654))
    assert result.to_dict() == {"asr": "hello world",
                                "spk": {"speaker_id": "uuid-1", "speaker_name": "Alice", "score": 0.8765}}


def test_unknown_speaker_value():
    unknown = m.Speaker.unknown(0.41).to_dict()
    assert unknown == {"speaker_id": "unknown", "speaker_name": "unknown", "score": 0.41}
    assert not m.Speaker.unknown().is_known
    assert m.Speaker.unknown().to_dict()["score"] == 0.0


def test_our_messages_have_a_type_results_do_not():
    assert m.error_message(m.ProtocolError(m.ErrorCode.SENDER_EXISTS, "x")) == {"type": "error", "code": "sender_exists", "message": "x"}
    ack = m.closed_message("s1", 3, 12.34567, "sender sent close")
    assert ack == {"type": "closed", "session_id": "s1", "results": 3, "audio_s": 12.346,
                   "reason": "sender sent close"}
    assert "type" not in m.Result("a", m.Speaker.unknown()).to_dict()

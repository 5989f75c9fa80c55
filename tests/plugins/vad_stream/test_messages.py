"""The wire format alone: parsing maps bad input to the seed's codes; replies have its fields."""

from __future__ import annotations

import json

import pytest

from asrhub_plugins.vad_stream import messages as msg
from asrhub_plugins.vad_stream.messages import ErrorCode, ProtocolError, parse_command


def code_of(text: str) -> int:
    with pytest.raises(ProtocolError) as info:
        parse_command(text)
    return int(info.value.code)


def test_error_codes_are_the_seed_table():
    assert sorted(int(c) for c in ErrorCode) == [1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16]


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", "\"ping\"", "42", "null"])
def test_invalid_json_is_code_1(text):
    assert code_of(text) == 1


@pytest.mark.parametrize("text", ['{"command": "dance"}', '{"cmd": "ping"}', '{"command": 7}',
                                  '{"command": null}', '{}'])
def test_unknown_or_missing_command_is_code_3(text):
    assert code_of(text) == 3


def test_every_seed_command_parses():
    for name in msg.COMMANDS:
        fields = {"user_id": "u1"} if name.endswith(("register_start", "verify_enable")) else {}
        assert parse_command(json.dumps({"command": name, **fields})).name == name


def test_register_user_id_missing_empty_or_bad_is_code_10():
    assert parse_command('{"command": "speaker_register_start"}').user_id is None
    assert parse_command('{"command": "speaker_register_start", "user_id": "  "}').user_id is None
    assert code_of('{"command": "speaker_register_start", "user_id": 5}') == 10
    assert code_of(json.dumps({"command": "speaker_register_start", "user_id": "x" * 200})) == 10
    assert parse_command('{"command": "speaker_register_start", "user_id": " 张三 "}').user_id == "张三"


def test_verify_enable_fields():
    cmd = parse_command('{"command": "speaker_verify_enable", "user_id": "u"}')
    assert (cmd.user_id, cmd.required) == ("u", True)  # the seed's default
    cmd = parse_command('{"command": "speaker_verify_enable", "user_id": "u", "required": false}')
    assert cmd.required is False
    assert parse_command('{"command": "speaker_verify_enable"}').user_id is None
    assert code_of('{"command": "speaker_verify_enable", "user_id": ["u"]}') == 15
    assert code_of('{"command": "speaker_verify_enable", "user_id": "u", "required": "no"}') == 1


def test_batch_start_fields():
    cmd = parse_command('{"command": "batch_start", "sample_rate": 16000, "language": "中文"}')
    assert (cmd.sample_rate, cmd.language) == (16000, "zh")
    cmd = parse_command('{"command": "batch_start"}')
    assert (cmd.sample_rate, cmd.language) == (16000, None)
    assert parse_command('{"command": "batch_start", "language": "English"}').language == "en"
    assert parse_command('{"command": "batch_start", "sample_rate": 8000.0}').sample_rate == 8000
    for bad in ('"fast"', "7", "96000", "16000.5", "true"):
        assert code_of('{"command": "batch_start", "sample_rate": ' + bad + "}") == 1
    assert code_of('{"command": "batch_start", "language": "Klingon"}') == 1
    assert code_of('{"command": "batch_start", "language": 3}') == 1


def test_replies_carry_the_seed_fields():
    assert msg.pong() == {"type": "pong"}
    assert msg.reset_done() == {"type": "reset", "message": "State reset successfully"}
    end = msg.speech_end(39296)
    assert end["type"] == "vad" and end["event"] == "speech_end"
    assert end["duration"] == 2.456 and end["samples"] == 39296 and end["timestamp"] > 1e12
    start = msg.speech_start()
    assert set(start) == {"type", "event", "timestamp"}
    result = msg.result("你好", 1, is_speeching=False)
    assert set(result) == {"type", "text", "is_final", "is_speeching", "timestamp", "segment_id"}
    assert result["is_final"] is True
    error = msg.error(ErrorCode.REGISTER_TOO_SHORT, "Audio too short: 2.1s < 3.0s")
    assert (error["type"], error["code"]) == ("error", 13) and set(error) == {"type", "message", "code", "timestamp"}
    assert msg.batch_result("x", 83776, 16000)["duration"] == 5.236
    progress = msg.batch_progress("receiving", "Receiving audio data...", received_bytes=64000)
    assert progress["received_bytes"] == 64000 and progress["state"] == "receiving"
    assert "received_bytes" not in msg.batch_progress("recognizing", "Processing audio...")
    reg = msg.register_progress("receiving", "Collecting audio...", received_bytes=64000, duration=2.0)
    assert (reg["type"], reg["duration"], reg["received_bytes"]) == ("speaker_register_progress", 2.0, 64000)
    verify = msg.verify_result("u", True, 0.85321, 0.3)
    assert (verify["score"], verify["threshold"], verify["success"]) == (0.8532, 0.3, True)
    listing = msg.speaker_list([{"user_id": "a", "dimension": 256, "registered_at": 1}])
    assert listing["count"] == 1 and listing["speakers"][0]["user_id"] == "a"
    # Chinese text goes out as UTF-8, not \\u escapes (the connection dumps with ensure_ascii=False).
    assert json.dumps(result, ensure_ascii=False).count("你好") == 1


@pytest.mark.parametrize("rate", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 500])
def test_batch_start_sample_rate_that_is_no_number_is_code_1_with_a_clean_message(rate):
    with pytest.raises(ProtocolError) as info:
        parse_command('{"command": "batch_start", "sample_rate": ' + rate + "}")
    assert int(info.value.code) == 1
    text = info.value.message
    assert "Error" not in text and "Traceback" not in text and "float" not in text, text
    assert text.startswith(("Invalid JSON message", "sample_rate must be")), text


def test_lone_surrogates_are_refused_and_never_break_encoding():
    from asrhub.protocol import dumps

    with pytest.raises(ProtocolError) as info:
        parse_command('{"command": "\\ud800"}')
    assert int(info.value.code) == 3
    envelope = dumps(msg.error_message(info.value))
    envelope.encode("utf-8")  # what the outbox writes: never a UnicodeEncodeError
    for name, code in (("speaker_register_start", 10), ("speaker_verify_enable", 15)):
        assert code_of('{"command": "' + name + '", "user_id": "a\\udc00b"}') == code


@pytest.mark.parametrize("user_id", ["../x", "x\u0000y", "<script>", "a/b", "x" * 65, ".hidden"])
def test_user_ids_the_store_would_not_take_are_refused(user_id):
    assert code_of(json.dumps({"command": "speaker_register_start", "user_id": user_id})) == 10
    assert code_of(json.dumps({"command": "speaker_verify_enable", "user_id": user_id})) == 15


def test_deep_nesting_and_huge_integers_are_code_1():
    assert code_of("[" * 100000 + "]" * 100000) == 1
    assert code_of('{"command": "ping", "n": ' + "9" * 5000 + "}") == 1

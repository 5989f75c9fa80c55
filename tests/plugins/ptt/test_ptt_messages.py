"""The PTT wire format: what parses, what is refused with which code."""

from __future__ import annotations

import json

import pytest

from asrhub.protocol import ProtocolError
from asrhub_plugins.ptt import messages as m


def test_control_and_audio_parse():
    assert m.parse('{"type":"control","command":"start","timestamp":1698756432000}') == \
        m.Control("start", 1698756432000)
    assert m.parse('{"type":"control","command":"stop"}') == m.Control("stop", None)
    assert m.parse('{"type":"control","command":"reset","timestamp":1.5e12}') == m.Control("reset", 1500000000000)
    assert m.parse('{"type":"audio","data":"AAA="}') == m.AudioChunk("AAA=", None)


@pytest.mark.parametrize("text, fragment", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"command": "start"}', "no \"type\""),
    ('{"type": "hello"}', "unknown message type 'hello'"),
    ('{"type": "control"}', "unknown command None"),
    ('{"type": "control", "command": "pause"}', "unknown command 'pause'"),
    ('{"type": "audio"}', "needs \"data\""),
    ('{"type": "audio", "data": 12}', "needs \"data\""),
    ('{"type": "control", "command": "stop", "timestamp": "soon"}', "must be an integer"),
    ('{"type": "control", "command": "stop", "timestamp": NaN}', "not valid JSON"),
    ('{"type": "control", "command": "stop", "timestamp": 1' + "0" * 45 + "}", "not valid JSON"),
    ('{"type": "control", "command": "stop", "timestamp": -1e19}', "out of range"),
    ('{"type": {"nested": 1}}', "must be a string"),
])
def test_bad_messages_are_400(text, fragment):
    with pytest.raises(ProtocolError) as info:
        m.parse(text)
    assert info.value.code == m.BAD_REQUEST
    assert fragment in info.value.message


def test_server_messages_have_the_seed_fields():
    result = m.result("partial", "hello", 1.7, 125.54)
    assert set(result) == {"type", "mode", "text", "timestamp", "confidence", "processing_time_ms"}
    assert result["confidence"] == 1.0 and result["processing_time_ms"] == 125.5
    assert isinstance(result["timestamp"], int)
    assert set(m.status("connected")) == {"type", "code", "message", "timestamp"}
    assert m.error(409, "x") | {"timestamp": 0} == {"type": "error", "code": 409, "message": "x",
                                                     "timestamp": 0}
    json.dumps([result, m.status("ok"), m.error(400, "x")])


@pytest.mark.parametrize("section, fragment", [
    ({"heartbeat_s": -1}, "heartbeat_s"),  # a shared listener limit, checked by the kit's class
    ({"max_message_bytes": 10}, "max_message_bytes"),
    ({"idle_timeout_s": -1}, "idle_timeout_s"),
    ({"max_backlog_s": 0}, "max_backlog_s"),
    ({"heartbeat": 5}, "unknown key 'heartbeat'"),  # old names are gone
])
def test_settings_are_checked_like_every_listener(section, fragment):
    from asrhub.config import ConfigError
    from asrhub.testing import make_hub

    with pytest.raises(ConfigError, match=fragment):
        make_hub({"protocols": {"ptt": section}}, only=["ptt"])


def test_settings_defaults():
    from asrhub.protocol import ListenerSettings
    from asrhub_plugins.ptt.settings import PTTSettings

    settings = PTTSettings()
    assert isinstance(settings, ListenerSettings)
    assert settings.max_connections == 20 and settings.max_message_bytes == 2 * 1024 * 1024
    assert settings.heartbeat_s == ListenerSettings.heartbeat_s

from __future__ import annotations

import pytest

from asrhub.config import ConfigError, load_config, parse_config
from asrhub.testing import EchoPlugin
from asrhub.testing import make_hub as _make_hub


def make_hub(sections):
    return _make_hub(sections, extra_plugins=[EchoPlugin()])


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = load_config(None, search=False)
    assert config.engines.asr == "whisper"
    assert config.executor.workers >= 1


def test_unknown_section_and_key_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[sever\]"):
        parse_config({"sever": {}})
    with pytest.raises(ConfigError, match=r"\[server\]: unknown key 'hots'"):
        parse_config({"server": {"hots": "x"}})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"\[executor\] workers: expected an integer"):
        parse_config({"executor": {"workers": "two"}})
    with pytest.raises(ConfigError, match=r"log_level: 'loud' is not one of"):
        parse_config({"server": {"log_level": "loud"}})
    with pytest.raises(ConfigError, match="workers and max_pending"):
        parse_config({"executor": {"workers": 0}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nhost=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("ASRHUB_TEST_TOKEN", "t0k")
    config = parse_config({"server": {"token": "env:ASRHUB_TEST_TOKEN"}})
    assert config.server.token == "t0k"
    monkeypatch.delenv("ASRHUB_TEST_TOKEN")
    with pytest.raises(ConfigError, match="ASRHUB_TEST_TOKEN is not set"):
        parse_config({"server": {"token": "env:ASRHUB_TEST_TOKEN"}})


def test_engine_sections_are_validated_by_the_engine_plugin():
    with pytest.raises(ConfigError, match=r"\[engines.nosuch\] names no installed engine"):
        make_hub({"engines": {"nosuch": {}}})
    with pytest.raises(ConfigError, match=r"\[engines\] asr = 'nosuch'"):
        make_hub({"engines": {"asr": "nosuch"}})


def test_protocol_listener_keys_checked():
    name = "echo"
    with pytest.raises(ConfigError, match="port: expected an integer"):
        make_hub({"protocols": {name: {"port": "80"}}})
    with pytest.raises(ConfigError, match="not a TCP port"):
        make_hub({"protocols": {name: {"port": 70000}}})
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        make_hub({"protocols": {name: {"tls_cert": "a.pem"}}})


def test_disable_a_protocol():
    name = "echo"
    hub = make_hub({"protocols": {name: {"enabled": False}}})
    assert name not in {lst.spec.name for lst in hub.enabled_listeners()}


def test_check_config_cli(tmp_path, capsys):
    from asrhub.cli import main

    good = tmp_path / "good.toml"
    good.write_text('[server]\nhost = "127.0.0.1"\n')
    assert main(["check-config", "--config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = 1\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "unknown key 'port'" in capsys.readouterr().err


def test_plugins_cli_lists_every_builtin(capsys):
    from asrhub.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("ptt", "streaming_stt", "vad_stream", "file_transcription", "session_broadcast",
                 "whisper", "funasr", "silero", "fsmn", "resemblyzer", "rnnoise", "gtcrn", "json"):
        assert name in out, name

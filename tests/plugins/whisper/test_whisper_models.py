"""Model resolution: the bundled models, local directories, and nothing from the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrhub.config import ConfigError
from asrhub.engine import ASREngine, ModelNotAvailable
from asrhub.testing import make_hub
from asrhub_plugins.whisper.engine import WhisperEngine
from asrhub_plugins.whisper.models import assemble_base, base_sources, resolve_model
from asrhub_plugins.whisper.settings import WhisperSettings


def test_base_is_assembled_into_the_state_dir_and_loads(base: WhisperEngine, base_dir: Path) -> None:
    target = base_dir / "models" / "whisper-base"
    assert base.model_path == target
    parts, _ = base_sources()
    assert (target / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert {p.name for p in target.iterdir()} == {"model.bin", "config.json", "tokenizer.json",
                                                  "vocabulary.json"}  # no temp files left
    assert base.multilingual and "zh" in base.supported_languages
    assert isinstance(base, ASREngine)


def test_assembly_is_idempotent(base: WhisperEngine, base_dir: Path) -> None:
    target = base_dir / "models" / "whisper-base"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in target.iterdir()}
    assert resolve_model("base", base_dir) == target
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in target.iterdir()}
    assert after == before  # nothing rewritten


def test_assembly_repairs_a_truncated_model(tmp_path: Path) -> None:
    target = assemble_base(tmp_path / "m")
    size = (target / "model.bin").stat().st_size
    with (target / "model.bin").open("r+b") as fh:
        fh.truncate(1000)
    assemble_base(target)
    assert (target / "model.bin").stat().st_size == size


def test_two_processes_racing_both_get_a_complete_model(tmp_path: Path) -> None:
    target = tmp_path / "race"
    code = ("import sys; from pathlib import Path; from asrhub_plugins.whisper.models import "
            "assemble_base; print(assemble_base(Path(sys.argv[1])).joinpath('model.bin').stat().st_size)")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                               text=True) for _ in range(2)]
    sizes = [int(racer.communicate(timeout=120)[0]) for racer in racers]
    parts, _ = base_sources()
    assert sizes == [sum(p.stat().st_size for p in parts)] * 2
    assert sorted(os.listdir(target)) == ["config.json", "model.bin", "tokenizer.json",
                                          "vocabulary.json"]


def test_configured_cache_dir(tmp_path: Path) -> None:
    path = resolve_model("base", None, str(tmp_path / "cache"))
    assert path == tmp_path / "cache" and (path / "model.bin").is_file()


def test_tiny_en_is_used_in_place(tiny: WhisperEngine) -> None:
    assert tiny.model_path.name == "model" and not tiny.multilingual
    assert tiny.supported_languages == ["en"]


def test_a_local_ctranslate2_directory_is_a_model(tiny: WhisperEngine, tmp_path: Path) -> None:
    assert resolve_model(str(tiny.model_path), tmp_path) == tiny.model_path


@pytest.mark.parametrize("name", ["small", "large-v3", "openai/whisper-small"])
def test_unknown_model_says_how_to_provide_one(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="ct2-transformers-converter"):
        WhisperEngine(WhisperSettings(model=name), state_dir=tmp_path)


def test_a_directory_without_the_model_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailable, match="model.bin"):
        resolve_model(str(tmp_path), tmp_path)
    with pytest.raises(ModelNotAvailable, match="not a directory"):
        resolve_model(str(tmp_path / "nowhere"), tmp_path)


def test_registered_as_the_default_asr_engine(tmp_path: Path) -> None:
    hub = make_hub({"server": {"state_dir": str(tmp_path)},
                    "engines": {"whisper": {"model": "tiny.en", "partial_interval": 0.5}}})
    assert "whisper" in hub.engine_specs["asr"]
    engine = hub.engine_sync("asr")
    assert isinstance(engine, WhisperEngine) and engine.model_name == "tiny.en"
    assert engine.settings.partial_interval == 0.5
    stream = engine.open_stream()  # its VAD is the hub's Silero engine
    assert stream._vad is not None and hub.loaded_engine("vad", "silero") is not None
    hub.unload_engines()


def test_decode_workers_default_to_one_per_core() -> None:
    import os

    from asrhub_plugins.whisper.engine import decode_workers

    cores = len(os.sched_getaffinity(0))
    assert decode_workers(0, cuda=False) == min(8, cores)
    assert decode_workers(0, cuda=True) == 1 and decode_workers(3, cuda=False) == 3


@pytest.mark.parametrize("section, key", [
    ({"modle": "base"}, "modle"),
    ({"chinese_script": "latin"}, "chinese_script"),
    ({"max_utterance_s": 40}, "max_utterance_s"),
    ({"num_workers": -1}, "num_workers"),
])
def test_bad_settings_are_config_errors(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_hub({"engines": {"whisper": section}})

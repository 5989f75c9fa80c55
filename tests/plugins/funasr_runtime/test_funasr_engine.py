"""The 2pass path on FunASR's own models: ``[engines] asr = "funasr"`` with the tiny,
freshly initialised Paraformer models the funasr plugin's tests build (streaming for the
``2pass-online`` pieces, offline for the ``2pass-offline`` decode of each VAD sentence) and
the real FSMN-VAD. The tiny models recognise garbage, so this checks shapes and behaviour
(message kinds, order, acknowledgement), never words."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import soundfile as sf

from asrhub.testing import free_port

from .conftest import Serve, joined_clips, run_client, write_config

pytestmark = pytest.mark.slow

_FUNASR_CONFTEST = Path(__file__).resolve().parent.parent / "funasr" / "conftest.py"
THREE_SENTENCES = "zh/funasr_csharp_example_1.wav"


def _builders():
    spec = importlib.util.spec_from_file_location("funasr_tiny_models", _FUNASR_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def funasr_server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("funasr")
    tmp = tmp_path_factory.mktemp("funasr-runtime-funasr")
    builders = _builders()
    offline = builders.build_tiny_paraformer(tmp / "tiny-paraformer", streaming=False)
    streaming = builders.build_tiny_paraformer(tmp / "tiny-paraformer-streaming", streaming=True)
    port = free_port()
    engines = ["[engines]", 'asr = "funasr"', 'vad = "fsmn"', "[engines.funasr]",
               f'model = "{offline}"', f'streaming_model = "{streaming}"', 'vad_model = ""',
               "ncpu = 1"]
    server = Serve(write_config(tmp, port, engines), port, tmp / "serve.log")
    server.start()
    yield server
    server.stop()


def test_2pass_on_funasr_models(funasr_server, tmp_path):
    path = tmp_path / "three.wav"
    sf.write(path, joined_clips([THREE_SENTENCES]), 16000, subtype="PCM_16")
    # Paced in real time: sent at once, a sentence reaches the streaming model in one piece
    # and its pieces would be one partial (shown only once a second one agrees with it).
    run = run_client(tmp_path, funasr_server.port, path, "2pass", fast=False)
    assert run.returncode == 0, run.output[-3000:]
    assert "server failed" not in run.output, run.output[-3000:]
    kinds = [e["mode"] for e in run.events]
    assert kinds[-1] == "2pass" and run.events[-1]["is_final"], kinds  # the acknowledgement
    assert "2pass-online" in kinds, kinds  # the streaming model's pieces
    offline = [e for e in run.events if e["mode"] == "2pass-offline"]
    assert offline and all(e["is_final"] for e in offline), kinds
    # Each sentence's online pieces come before its offline result.
    assert kinds.index("2pass-online") < kinds.index("2pass-offline"), kinds


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_other_modes_on_funasr_models(funasr_server, tmp_path, mode):
    run = run_client(tmp_path, funasr_server.port, _clip(tmp_path), mode, fast=True)
    assert run.returncode == 0, run.output[-3000:]
    kinds = [e["mode"] for e in run.events]
    assert kinds and kinds[-1] == mode and run.events[-1]["is_final"], kinds
    if mode == "offline":
        assert kinds.count("offline") == 2, kinds  # one result, then the acknowledgement


def _clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, joined_clips([THREE_SENTENCES], gap_s=0.5), 16000, subtype="PCM_16")
    return path

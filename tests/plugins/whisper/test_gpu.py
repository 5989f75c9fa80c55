"""The GPU path of the Whisper engine: ``device``, ``compute_type`` and the ``gpu_`` batching.

Two kinds of test:

- Everywhere: how settings resolve (``auto`` is the CPU without a GPU, compute types and
  batching per device), what the config check rejects, and the clear error that
  ``device = "cuda"`` gives on a machine without a GPU (this project's machines).
- Only where CTranslate2 finds a CUDA device (skipped elsewhere, with the reason): tiny.en
  loaded on the GPU in float16 transcribes real recordings as well as the CPU does, and
  batched GPU decodes, 30 s windows included, give the text of one-by-one decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asrhub.config import ConfigError, build_settings
from asrhub.devices import Device, DeviceUnavailable, ctranslate2_cuda_devices, parse_device
from asrhub.engine import EngineError
from asrhub.testing import manifest, wer
from asrhub_plugins.whisper.device import Batching, check_supported, place
from asrhub_plugins.whisper.engine import GPU_FILE_BATCH, WhisperEngine, _warm_up_cuda
from asrhub_plugins.whisper.settings import WhisperSettings

from .test_whisper_accuracy import CLIPS, decode_at_once  # CLIPS: trustworthy English recordings

CUDA_DEVICES = ctranslate2_cuda_devices()
needs_gpu = pytest.mark.skipif(CUDA_DEVICES == 0, reason="CTranslate2 finds no CUDA device here")
needs_no_gpu = pytest.mark.skipif(CUDA_DEVICES > 0, reason="this machine has a CUDA device")

CPU_BATCHING = Batching(max_batch=8, gather_ms=10.0, max_window_s=10.0)
GPU_BATCHING = Batching(max_batch=16, gather_ms=25.0, max_window_s=30.0)


def settings(**values) -> WhisperSettings:
    return build_settings(WhisperSettings, values, "[engines.whisper]")


# ---------------------------------------------------------------------- everywhere

def test_auto_is_the_cpu_with_todays_settings_when_there_is_no_gpu() -> None:
    placement = place(settings(), cuda_devices=0)
    assert placement.device == Device("cpu")
    assert placement.compute_type == "int8"  # what the engine always used on the CPU
    assert placement.batching == CPU_BATCHING


def test_auto_is_the_first_gpu_with_float16_and_gpu_batching_when_there_is_one() -> None:
    placement = place(settings(), cuda_devices=2)
    assert placement.device == Device("cuda", 0)
    assert str(placement.device) == "cuda:0"
    assert placement.compute_type == "float16"
    assert placement.batching == GPU_BATCHING


def test_gpu_batching_is_only_for_cuda() -> None:
    # A machine with a GPU but the engine told to use the CPU: the CPU's batching.
    assert place(settings(device="cpu"), cuda_devices=1).batching == CPU_BATCHING
    assert place(settings(device="cuda:1"), cuda_devices=2).batching == GPU_BATCHING
    # The gpu_ settings never touch a CPU engine, and the CPU ones never a GPU engine.
    tuned = settings(max_batch=4, gpu_max_batch=32, gpu_batch_gather_ms=50,
                     gpu_batch_max_window_s=20)
    assert place(tuned, cuda_devices=0).batching == Batching(4, 10.0, 10.0)
    assert place(tuned, cuda_devices=1).batching == Batching(32, 50.0, 20.0)


def test_an_explicit_compute_type_wins_on_either_device() -> None:
    assert place(settings(compute_type="float32"), cuda_devices=0).compute_type == "float32"
    assert place(settings(compute_type="int8_float16", device="cuda"),
                 cuda_devices=1).compute_type == "int8_float16"
    assert place(settings(compute_type="int8", device="cuda:0"), cuda_devices=1).compute_type == "int8"


def test_cuda_without_such_a_gpu_is_a_clear_error_before_loading() -> None:
    with pytest.raises(DeviceUnavailable, match=r"\[engines.whisper\] device = 'cuda', but "
                                                r"CTranslate2 finds no CUDA device"):
        place(settings(device="cuda"), cuda_devices=0)
    with pytest.raises(DeviceUnavailable, match=r"finds 2 CUDA devices \(cuda:0 to cuda:1\)"):
        place(settings(device="cuda:2"), cuda_devices=2)


@needs_no_gpu
def test_the_engine_on_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="no CUDA device") as raised:
        WhisperEngine(WhisperSettings(model="tiny.en", device="cuda"), state_dir=tmp_path)
    assert isinstance(raised.value, EngineError)  # the hub reports engine errors at load
    assert 'device = "cpu"' in str(raised.value)  # and the way out


@needs_no_gpu
def test_the_default_engine_runs_on_the_cpu_in_int8_as_before(tiny: WhisperEngine) -> None:
    assert tiny.device == Device("cpu")
    assert tiny.placement.compute_type == "int8"
    assert tiny._ct2.device == "cpu"
    assert tiny._ct2.compute_type == "int8_float32"  # CTranslate2's name for int8 on the CPU
    assert (tiny.batcher.max_batch, tiny.batcher.gather_s, tiny.batcher.max_window) == (8, 0.01, 1000)


def test_file_batch_size_auto_is_sequential_on_the_cpu(tiny: WhisperEngine) -> None:
    assert tiny.settings.file_batch_size == 0  # auto
    assert tiny.file_batch_size == (GPU_FILE_BATCH if tiny.device.is_cuda else 1)


def test_the_gpu_warm_up_pass_runs(tiny: WhisperEngine) -> None:
    # The encoder pass a GPU engine makes at load (to fail at start-up without cuBLAS) runs on
    # any device; it once asked the feature extractor for an attribute it does not have.
    _warm_up_cuda(tiny._model)


def test_a_compute_type_this_ctranslate2_cannot_run_there_is_named() -> None:
    import ctranslate2

    placement = place(settings(compute_type="int16"), cuda_devices=0)
    supported = ctranslate2.get_supported_compute_types("cpu")
    if "int16" in supported:
        pytest.skip("this CPU computes int16")
    with pytest.raises(EngineError, match=r"compute_type = 'int16' is not supported on cpu .*int8"):
        check_supported(placement, supported)
    check_supported(place(settings(), cuda_devices=0), supported)  # int8: fine


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "CUDA", " cpu "])
def test_device_forms_that_are_accepted(value: str) -> None:
    assert settings(device=value).device == value
    parse_device(value)


@pytest.mark.parametrize(("values", "message"), [
    ({"device": "gpu"}, r"device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\".*'gpu'"),
    ({"device": "cuda:x"}, "device must be"),
    ({"device": "cpu:1"}, "device must be"),
    ({"device": "mps"}, "device must be"),
    ({"device": ""}, "device must be"),
    ({"compute_type": "fp16"}, r"compute_type must be \"auto\" or one of int8, .*'fp16'"),
    ({"device": "cpu", "compute_type": "float16"}, "compute_type 'float16' needs a GPU"),
    ({"device": "cpu", "compute_type": "int8_float16"}, "compute_type 'int8_float16' needs a GPU"),
    ({"gpu_max_batch": 0}, "gpu_max_batch must be between 1 and 64"),
    ({"gpu_max_batch": 65}, "gpu_max_batch must be between 1 and 64"),
    ({"gpu_batch_gather_ms": 500}, "gpu_batch_gather_ms must be between 0 and 200"),
    ({"gpu_batch_max_window_s": 5}, "gpu_batch_max_window_s must be between 10 and 30"),
])
def test_bad_values_are_config_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[engines.whisper\]: " + message):
        settings(**values)


def test_check_config_rejects_a_bad_device(tmp_path: Path, capsys) -> None:
    from asrhub.cli import main

    config = tmp_path / "asrhub.toml"
    config.write_text('[engines.whisper]\ndevice = "gpu"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    assert "device must be" in capsys.readouterr().err
    config.write_text('[engines.whisper]\ndevice = "cuda:1"\ncompute_type = "int8_float16"\n'
                      "gpu_max_batch = 32\n")
    assert main(["check-config", "--config", str(config)]) == 0  # a GPU is checked at load


# ---------------------------------------------------------------------- on a GPU

@pytest.fixture(scope="module")
def tiny_gpu(tmp_path_factory: pytest.TempPathFactory) -> WhisperEngine:
    engine = WhisperEngine(WhisperSettings(model="tiny.en", device="cuda", compute_type="float16"),
                           state_dir=tmp_path_factory.mktemp("tiny-gpu"))
    yield engine
    engine.close()


@needs_gpu
def test_tiny_en_on_the_gpu_in_float16(tiny_gpu: WhisperEngine, tiny: WhisperEngine, clip) -> None:
    assert tiny_gpu.device == Device("cuda", 0)
    assert tiny_gpu._ct2.device == "cuda"
    assert tiny_gpu._ct2.compute_type == "float16"
    assert tiny_gpu.batcher.max_batch == 16 and tiny_gpu.batcher.max_window == 3000
    assert tiny_gpu.file_batch_size == GPU_FILE_BATCH  # auto: the batched pipeline for files
    references = {name: manifest()[name]["transcript"] for name in CLIPS}
    gpu = " ".join(tiny_gpu.transcribe(clip(name), language="en").text for name in CLIPS)
    cpu = " ".join(tiny.transcribe(clip(name), language="en").text for name in CLIPS)
    reference = " ".join(references[name] for name in CLIPS)
    print(f"WER tiny.en on these clips: GPU float16 {wer(reference, gpu):.3f}, "
          f"CPU int8 {wer(reference, cpu):.3f}")
    assert wer(reference, gpu) <= max(0.10, 1.1 * wer(reference, cpu))


@needs_gpu
def test_a_long_recording_on_the_gpu(tiny_gpu: WhisperEngine, clip) -> None:
    # Over SHORT_CLIP_S: faster-whisper's own pipeline (30 s windows, word timestamps) on CUDA.
    names = CLIPS[:4]
    audio = np.concatenate([clip(name) for name in names])
    transcript = tiny_gpu.transcribe(audio, language="en", word_timestamps=True)
    reference = " ".join(manifest()[name]["transcript"] for name in names)
    assert wer(reference, transcript.text) < 0.15
    assert transcript.segments[0].words


@needs_gpu
def test_batched_gpu_decodes_give_the_text_of_one_by_one(tiny_gpu: WhisperEngine, clip) -> None:
    audios = [clip(name) for name in CLIPS] * 2  # 12 finals at once, 20-30 s windows
    one_by_one = [tiny_gpu.decode(audio, "en").text for audio in audios]
    results = decode_at_once(tiny_gpu, audios)
    assert [r.text for r in results] == one_by_one
    assert max(r.batch_size for r in results) > 1  # final windows batch on a GPU
    assert tiny_gpu.batcher.stats.largest <= 16

"""The GPU path of the torch engines (FunASR ASR, FSMN-VAD, CAM++, resemblyzer): ``device``
and FunASR's ``compute_type``.

Everywhere: settings validation, device resolution, the clear error for ``device = "cuda"``
where torch finds no GPU (torch is a CPU build on this project's machines), and the float16
encoder path itself, run on the CPU through torch's float16 autocast (FunASR's own ``fp16``
option and whole-call autocast both fail on these models: see
:func:`asrhub_plugins.funasr.runtime.encoder_in_half`). Where torch finds a CUDA device: the
models load and decode on it in float32 and float16.

The Paraformer/SenseVoice models are conftest.py's tiny random ones: texts are compared with
each other (same input, same weights), never with a transcript.
"""

from __future__ import annotations

import pytest

from asrhub.config import ConfigError, build_settings
from asrhub.devices import Device, DeviceUnavailable, torch_cuda_devices
from asrhub.engine import EngineError

from .conftest import read_clip

CUDA_DEVICES = torch_cuda_devices()
needs_gpu = pytest.mark.skipif(CUDA_DEVICES == 0, reason="torch finds no CUDA device here")
needs_no_gpu = pytest.mark.skipif(CUDA_DEVICES > 0, reason="this machine has a CUDA device")
CLIP = "zh/funasr_llamacpp_sample.wav"  # 6 s, two phrases


def funasr_settings(**values):
    from asrhub_plugins.funasr.asr import FunASRSettings

    return build_settings(FunASRSettings, values, "[engines.funasr]")


def make_engine(tiny_models, kind: str = "paraformer", **values):
    from asrhub_plugins.funasr.asr import FunASREngine, FunASRSettings

    if kind == "paraformer":
        models = {"model": str(tiny_models["offline"]),
                  "streaming_model": str(tiny_models["streaming"]),
                  "punc_model": str(tiny_models["punc"])}
    else:
        models = {"model": str(tiny_models["sensevoice"]), "streaming_model": ""}
    return FunASREngine(FunASRSettings(ncpu=1, **(models | values)))


def texts(engine, audio) -> tuple[str, list[str]]:
    """The whole-recording text, and the streamed finals (partials drive the streaming model)."""
    stream = engine.open_stream()
    for begin in range(0, len(audio), 1600):
        stream.accept(audio[begin:begin + 1600])
    return engine.transcribe(audio).text, [h.text for h in stream.finish()]


# ---------------------------------------------------------------------- everywhere

def test_the_defaults_stay_on_the_cpu_in_float32() -> None:
    from asrhub_plugins.funasr.runtime import place

    settings = funasr_settings()
    assert (settings.device, settings.compute_type) == ("cpu", "auto")
    assert place(settings.device, settings.compute_type, where="w", cuda_devices=4) == (
        Device("cpu"), False)


def test_auto_and_compute_types_resolve_per_device() -> None:
    from asrhub_plugins.funasr.runtime import place

    assert place("auto", "auto", where="w", cuda_devices=0) == (Device("cpu"), False)
    assert place("auto", "auto", where="w", cuda_devices=1) == (Device("cuda", 0), True)
    assert place("cuda:1", "float32", where="w", cuda_devices=2) == (Device("cuda", 1), False)
    assert place("cuda", "float16", where="w", cuda_devices=1) == (Device("cuda", 0), True)
    with pytest.raises(DeviceUnavailable, match=r"\[engines.funasr\] device = 'cuda', but "
                                                r"torch finds no CUDA device .*CPU-only build"):
        place("cuda", "auto", where="[engines.funasr] device", cuda_devices=0)


@pytest.mark.parametrize(("values", "message"), [
    ({"device": "gpu"}, r"device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
    ({"device": "cuda:"}, "device must be"),
    ({"compute_type": "int8"}, r"compute_type must be one of auto, float32, float16, not 'int8'"),
    ({"compute_type": "float16"}, "compute_type \"float16\" needs a GPU"),  # device "cpu"
])
def test_bad_funasr_values_are_config_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[engines.funasr\]: " + message):
        funasr_settings(**values)


def test_the_other_torch_engines_check_their_device() -> None:
    from asrhub_plugins.funasr.campplus import CampPlusSettings
    from asrhub_plugins.funasr.vad import FsmnVADSettings
    from asrhub_plugins.speakers.resemblyzer_engine import ResemblyzerSettings

    for cls, section in ((FsmnVADSettings, "[engines.fsmn]"), (CampPlusSettings, "[engines.campplus]"),
                         (ResemblyzerSettings, "[engines.resemblyzer]")):
        assert cls().device == "cpu"
        assert build_settings(cls, {"device": "cuda:0"}, section).device == "cuda:0"
        with pytest.raises(ConfigError, match=rf"\{section[:-1]}\]: device must be"):
            build_settings(cls, {"device": "gpu0"}, section)


def test_check_config_rejects_a_bad_funasr_device(tmp_path, capsys) -> None:
    from asrhub.cli import main

    config = tmp_path / "asrhub.toml"
    config.write_text('[engines.funasr]\ndevice = "cuda0"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    assert "[engines.funasr]: device must be" in capsys.readouterr().err


@needs_no_gpu
def test_cuda_without_a_gpu_is_a_clear_error_not_a_quiet_cpu_load(tiny_models) -> None:
    # FunASR's AutoModel would load on the CPU without a word.
    with pytest.raises(DeviceUnavailable, match="torch finds no CUDA device") as raised:
        make_engine(tiny_models, device="cuda")
    assert isinstance(raised.value, EngineError)
    from asrhub_plugins.funasr.vad import FsmnVADEngine, FsmnVADSettings

    with pytest.raises(DeviceUnavailable, match=r"\[engines.fsmn\] device = 'cuda:0'"):
        FsmnVADEngine(FsmnVADSettings(device="cuda:0"))


@pytest.mark.parametrize("kind", ["paraformer", "sensevoice"])
def test_the_float16_encoder_path_runs_and_keeps_the_text(tiny_models, kind: str) -> None:
    """encoder_in_half on the CPU (torch's float16 autocast exists there too): the encoder
    really computes in float16, the rest gets float32, and on these models the text is the
    float32 text, whole recordings and streams alike."""
    import torch

    from asrhub_plugins.funasr.runtime import encoder_in_half

    audio = read_clip(CLIP)
    engine = make_engine(tiny_models, kind, **({"stream_final": "streaming"}
                                               if kind == "paraformer" else {}))
    full = texts(engine, audio)
    models = {id(m.automodel.model): m.automodel.model for m in (engine.offline, engine.streaming)
              if m is not None}
    in_encoder: set[torch.dtype] = set()
    after_encoder: set[torch.dtype] = set()
    for model in models.values():
        encoder_in_half(model)
        encoder_layers = set(map(id, model.encoder.modules()))
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                seen = in_encoder if id(layer) in encoder_layers else after_encoder
                layer.register_forward_hook(lambda module, args, output, seen=seen:
                                            seen.add(output.dtype))
    assert texts(engine, audio) == full
    assert in_encoder == {torch.float16}
    assert after_encoder == {torch.float32}  # predictor, decoder, CTC head


# ---------------------------------------------------------------------- on a GPU

@needs_gpu
@pytest.mark.parametrize("kind", ["paraformer", "sensevoice"])
def test_models_decode_on_the_gpu_in_float32_and_float16(tiny_models, kind: str) -> None:
    audio = read_clip(CLIP)
    cpu = texts(make_engine(tiny_models, kind), audio)
    on_gpu = make_engine(tiny_models, kind, device="cuda", compute_type="float32")
    assert on_gpu.device == Device("cuda", 0)
    assert next(on_gpu.offline.automodel.model.parameters()).device.type == "cuda"
    assert texts(on_gpu, audio) == cpu
    half = make_engine(tiny_models, kind, device="cuda")  # compute_type auto: float16
    assert half.offline.half
    assert texts(half, audio) == cpu


@needs_gpu
def test_fsmn_vad_on_the_gpu_finds_the_cpu_regions(fsmn_engine) -> None:
    from asrhub_plugins.funasr.vad import FsmnVADEngine, FsmnVADSettings

    audio = read_clip(CLIP)
    engine = FsmnVADEngine(FsmnVADSettings(device="cuda"))
    try:
        assert engine.speech_regions(audio) == fsmn_engine.speech_regions(audio)
    finally:
        engine.close()

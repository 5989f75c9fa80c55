"""Speaker engine "campplus": FunASR/ModelScope CAM++ or ERes2Net(V2) speaker-verification models.

The seed used ModelScope ``iic/speech_eres2netv2_sv_zh-cn_16k-common`` with threshold 0.3. These
models cannot be downloaded here (no network at run time, never at run time anyway): set
``[engines.campplus] model`` to a local model directory, or put the model in the ModelScope cache
(``$MODELSCOPE_CACHE`` or ``~/.cache/modelscope/hub``). funasr is imported only when the engine
loads (6-9 s, ~520 MB).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from asrhub.engine import SAMPLE_RATE, Audio, EngineError, ModelNotAvailable

DEFAULT_MODEL = "iic/speech_campplus_sv_zh-cn_16k-common"
MODEL_FILES = ("config.yaml", "configuration.json")
MIN_SECONDS = 0.5


@dataclass(frozen=True)
class CampPlusSettings:
    # a model directory, or a ModelScope id found in the local ModelScope cache
    model: str = DEFAULT_MODEL
    # The seed's value for ERes2NetV2; NOT calibrated here (no model to run): calibrate with
    # `python -m asrhub_plugins.speakers.calibrate --engine campplus` once the model is present.
    threshold: float = 0.3
    ncpu: int = 2

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model must name a directory or a ModelScope id")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity: between -1 and 1")
        if self.ncpu < 1:
            raise ValueError("ncpu must be >= 1")


def modelscope_cache_dirs() -> list[Path]:
    roots = []
    if os.environ.get("MODELSCOPE_CACHE"):
        roots.append(Path(os.environ["MODELSCOPE_CACHE"]))
    roots.append(Path.home() / ".cache" / "modelscope" / "hub")
    # modelscope >= 1.14 keeps models under <cache>/models/<owner>/<name>; older ones directly
    return [d for root in roots for d in (root / "models", root)]


def resolve_model(model: str) -> Path:
    """The local directory holding ``model``, or ModelNotAvailable saying how to provide it."""
    candidates = [Path(model).expanduser()]
    if not Path(model).is_absolute() and "/" in model:
        candidates += [root / model for root in modelscope_cache_dirs()]
    for path in candidates:
        if path.is_dir() and any((path / f).is_file() for f in MODEL_FILES):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise ModelNotAvailable(
        f"speaker model {model!r} is not available offline (looked in: {looked}). asrhub never "
        "downloads models at run time. On a machine with network: "
        f"`pip install modelscope && modelscope download --model {model} --local_dir DIR`, "
        "copy DIR here and set [engines.campplus] model = \"DIR\" (or copy it into the ModelScope "
        f"cache as ~/.cache/modelscope/hub/models/{model}); or use [engines] speaker = \"resemblyzer\", "
        "which ships its weights.")


class CampPlusEngine:
    name = "campplus"

    def __init__(self, settings: CampPlusSettings) -> None:
        path = resolve_model(settings.model)
        try:
            from funasr import AutoModel
        except ImportError as exc:
            raise EngineError(f"speaker engine campplus needs funasr (pip install 'asrhub[funasr]'): "
                              f"{exc}") from exc
        self.model_name = path.name
        self.default_threshold = settings.threshold
        self._model = AutoModel(model=str(path), disable_update=True, device="cpu",
                                ncpu=settings.ncpu, disable_pbar=True, disable_log=True)
        self._lock = threading.Lock()
        self.dim = int(self._embed(np.zeros(SAMPLE_RATE, np.float32)).shape[0])

    def _embed(self, audio: Audio) -> npt.NDArray[np.float32]:
        with self._lock:
            result = self._model.generate(input=audio)
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

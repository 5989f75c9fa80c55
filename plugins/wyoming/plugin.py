"""The Wyoming protocol (Home Assistant's voice pipeline) on TCP port 10300."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import WyomingSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub
    from asrhub.protocol import ProtocolContext

PROTOCOL = "wyoming"


def _setup(ctx: ProtocolContext) -> None:
    from .handler import setup  # imported lazily: listing plugins loads no protocol code

    setup(ctx)


def _preload(settings: WyomingSettings) -> list[str]:
    return ["speaker", "voiceprints"] if settings.identify_speakers else []


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name=PROTOCOL,
        default_port=10300,
        description="Wyoming (Home Assistant's voice protocol): describe/info, transcribe, "
                    "streaming transcripts while audio flows, any PCM format, optional "
                    "speaker identification and zeroconf discovery",
        setup=_setup,
        settings_class=WyomingSettings,
        transport="tcp",
        preload=_preload,
    )]


@hookimpl
def asrhub_startup(hub: Hub) -> None:
    from .discovery import start_announcing

    start_announcing(hub, PROTOCOL)


@hookimpl
def asrhub_shutdown(hub: Hub) -> None:
    from .discovery import stop_announcing

    stop_announcing(hub)

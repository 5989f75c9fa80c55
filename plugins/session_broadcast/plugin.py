"""asrhub plugin: the session-broadcast protocol on :8000 (seed ``session-broadcast-8000.md``).

``/ws/asr/{session_id}?mode=sender`` streams float32 PCM; every ``mode=receiver`` of the same
session (and the sender) gets ``{"asr", "spk"}`` per recognised segment.
"""

from __future__ import annotations

from asrhub.hookspecs import hookimpl
from asrhub.protocol import ProtocolContext
from asrhub.specs import ProtocolSpec

from .settings import BroadcastSettings


def _setup(ctx: ProtocolContext) -> None:
    from .handler import setup_routes

    setup_routes(ctx)


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name="session_broadcast",
        default_port=8000,
        description="session broadcast: one sender's float32 PCM, VAD-segmented results with "
                    "speaker identification to every receiver (/ws/asr/{session_id}?mode=)",
        setup=_setup,
        settings_class=BroadcastSettings,
        # Identification embeds every segment: load the speaker model before reporting ready,
        # not in the first session (3 s load + a slow first embedding).
        preload=lambda s: ("speaker", "voiceprints") if s.identify_speakers else (),
        # With [cluster] redis_url a sender and its receivers may reach different instances
        # (results fan out through Redis): HAProxy balances this port by leastconn.
        instance_affinity=False,
    )]

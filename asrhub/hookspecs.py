"""The hooks a plugin may implement. Every hook is prefixed ``asrhub_``.

Hooks run at start-up, at shutdown and at session boundaries; never per audio frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from asrhub.hub import Hub
    from asrhub.specs import EngineSpec, ProtocolSpec

PROJECT = "asrhub"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def asrhub_register_protocols() -> list[ProtocolSpec]:
    """Called once when the hub is built. Return the wire protocols this plugin serves.

    Each spec names the protocol (its config section ``[protocols.<name>]``), its default port
    and a ``setup`` callable that adds routes to the listener's aiohttp application. All
    results are collected; a name registered twice is an error.
    """
    raise NotImplementedError


@hookspec
def asrhub_register_asr_engines() -> list[EngineSpec]:
    """Called once when the hub is built. Return speech-recognition engines.

    A factory builds an object implementing :class:`asrhub.engine.ASREngine`. All results are
    collected; the engine named by ``[engines] asr`` is the default.
    """
    raise NotImplementedError


@hookspec
def asrhub_register_vad_engines() -> list[EngineSpec]:
    """Called once when the hub is built. Return voice-activity detectors.

    A factory builds an object implementing :class:`asrhub.engine.VADEngine`. All results are
    collected; ``[engines] vad`` names the default.
    """
    raise NotImplementedError


@hookspec
def asrhub_register_speaker_engines() -> list[EngineSpec]:
    """Called once when the hub is built. Return speaker-embedding engines.

    A factory builds an object implementing :class:`asrhub.engine.SpeakerEngine`. All results
    are collected; ``[engines] speaker`` names the default.
    """
    raise NotImplementedError


@hookspec
def asrhub_register_denoisers() -> list[EngineSpec]:
    """Called once when the hub is built. Return noise suppressors.

    A factory builds an object implementing :class:`asrhub.engine.Denoiser`. All results are
    collected; ``[engines] denoise`` names the default ("none" disables suppression).
    """
    raise NotImplementedError


@hookspec
def asrhub_register_voiceprint_stores() -> list[EngineSpec]:
    """Called once when the hub is built. Return voiceprint stores.

    A factory builds an object implementing :class:`asrhub.engine.VoiceprintStore`. All results
    are collected; ``[engines] voiceprints`` names the one in use.
    """
    raise NotImplementedError


@hookspec
def asrhub_startup(hub: Hub) -> None:
    """Called after engines are loaded and every listener is bound, before readiness is reported.

    Not firstresult: every implementation runs. An exception aborts start-up.
    """


@hookspec
def asrhub_shutdown(hub: Hub) -> None:
    """Called once on shutdown, after listeners stopped and sessions drained, before engines unload.

    Not firstresult: every implementation runs; exceptions are logged and ignored.
    """


@hookspec
def asrhub_session_closed(hub: Hub, summary: dict[str, Any]) -> None:
    """Called when any protocol session ends, with its summary.

    ``summary`` holds protocol, conn_id, duration_s, audio_s, processing_s, rtf and
    close_reason. Not firstresult; return values are ignored.
    """

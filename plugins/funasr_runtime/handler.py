"""The adapter: FunASR's runtime protocol on the core's WebSocket transport, at ``/``."""

from __future__ import annotations

import inspect
from typing import Any

from asrhub.engine import Audio, Transcript
from asrhub.executor import Priority
from asrhub.protocol import Channel, ErrorCodes, ProtocolContext, WebSocketRoute
from asrhub.streaming import LiveRecognizer

from . import messages as m
from .session import FunASRRuntimeSession

CODES = ErrorCodes(bad_message=m.BAD_MESSAGE, too_big=m.TOO_BIG, busy=m.SERVER_BUSY,
                   internal=m.INTERNAL_ERROR, too_many_connections=m.TOO_MANY_CONNECTIONS)
USAGE = ("FunASR runtime WebSocket protocol: send {\"mode\": \"2pass\", \"wav_name\": \"demo\", "
         "\"is_speaking\": true, ...}, binary PCM int16 16 kHz, then {\"is_speaking\": false, "
         "\"is_end\": true}")


class HubRecogniser:
    """The hub's shared engines as a session sees them: the default ASR engine's streams
    (segmented by the default VAD engine) and whole-recording decodes, in the executor."""

    def __init__(self, ctx: ProtocolContext) -> None:
        self.ctx = ctx
        self.live = LiveRecognizer.for_hub(ctx.hub)
        self._accepts_prompt: bool | None = None

    async def accepts_prompt(self) -> bool:
        """Whether the engine's ``transcribe`` takes ``prompt`` (hotwords go there)."""
        if self._accepts_prompt is None:
            engine = await self.ctx.hub.asr()
            try:
                self._accepts_prompt = "prompt" in inspect.signature(engine.transcribe).parameters
            except (TypeError, ValueError):
                self._accepts_prompt = False
        return self._accepts_prompt

    async def transcribe(self, audio: Audio, *, language: str | None, word_timestamps: bool,
                         prompt: str | None, priority: Priority) -> Transcript:
        extra: dict[str, Any] = {"prompt": prompt} if prompt else {}

        def call(engine: Any) -> Transcript:
            return engine.transcribe(audio, language=language, word_timestamps=word_timestamps,
                                     **extra)

        return await self.ctx.infer("asr", call, priority=priority)


def setup(ctx: ProtocolContext) -> None:
    # FFmpeg's bindings now, not in the first mp3 input's decode (the import holds the GIL).
    import av  # noqa: F401

    recogniser = HubRecogniser(ctx)

    def open_session(channel: Channel, request: Any) -> FunASRRuntimeSession:
        return FunASRRuntimeSession(channel, ctx.settings, recogniser,
                                    observe_final_latency=ctx.observe_final_latency)

    ctx.websocket(WebSocketRoute(path="/", open_session=open_session,
                                 error_message=m.error_envelope, codes=CODES, usage=USAGE,
                                 protocols=("binary",)))

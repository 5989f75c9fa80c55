"""``[protocols.vad_stream]``: the seed's configuration parameters, as settings.

Seed parameter → setting (defaults are the seed's unless noted):

| seed | setting |
|---|---|
| ``WS_HOST`` / ``WS_PORT`` | the core's ``host`` / ``port`` (9200); the HTTP service is ``[protocols.vad_stream.static]`` (9201) |
| ``VAD_THRESHOLD`` (0.5) | the VAD engine's own setting (``[engines.silero]``): the engine is shared by every protocol |
| ``VAD_SPEECH_FRAMES`` (3) | ``vad_speech_frames`` |
| ``VAD_SILENCE_FRAMES`` (10) | ``vad_silence_frames`` (the seed's prose says 5, its table 10: the table wins) |
| (frame length, not in the seed) | ``vad_frame_ms`` = 32 (one Silero window) |
| ``ENERGY_THRESHOLD`` (0.01) | ``energy_threshold`` (RMS of the segment, full scale = 1.0) |
| ``VAD_SPEECH_RATIO_THRESHOLD`` (0.3) | ``speech_ratio_threshold`` |
| 最小语音段时长 (0.3 s) | ``min_segment_s`` |
| 最大缓冲时长 (2.0 s) | ``buffer_max_s``: audio kept before a detected speech start |
| ``ASR_MIN_TEXT_LENGTH`` (2) | ``min_text_length`` |
| ``ASR_LANGUAGE`` ("中文") | ``language`` ("" = the ASR engine's setting: the hub serves more than Chinese) |
| ``NS_ENABLED`` (false) | ``ns_enabled`` (+ ``ns_engine``: "" = ``[engines] denoise``) |
| ``SPEAKER_THRESHOLD`` (0.3) | ``speaker_threshold``: 0 = the speaker engine's calibrated default (0.3 was calibrated for ERes2NetV2, not for the hub's engine) |
| ``SPEAKER_MODEL_ID`` | ``[engines] speaker`` |
| ``SPEAKER_DB_PATH`` | ``[engines] voiceprints`` (the store lives in the hub's state directory) |
| ``SPEAKER_MIN_REGISTRATION_DURATION`` (3.0) | ``speaker_min_registration_s`` |
| ``SPEAKER_MAX_REGISTRATION_DURATION`` (30.0) | ``speaker_max_registration_s`` (audio past it is ignored) |
| ``SPEAKER_VERIFICATION_REQUIRED`` (false) | ``speaker_verification_required`` |
| ``SPEAKER_VERIFICATION_DEFAULT_USER`` ("") | ``speaker_verification_default_user`` |
| 同一用户多次注册会覆盖 | ``speaker_overwrite`` = "owner" (only the admin token, the token it was registered with, or the registering connection; "always" is the seed), ``speaker_max_voiceprints``, ``speaker_registrations_per_minute`` |
| 连接超时 60 s / Ping 间隔 20 s | ``heartbeat_s`` = 20 (a WebSocket ping after 20 s without a message from the client) and ``heartbeat_timeout_s`` = 40 (no pong and no message for 40 s more: closed), so a client silent for 60 s is dropped |

The shared listener limits (``max_connections``, ``max_connections_per_peer``,
``max_message_bytes``, ``max_outbox``, ``heartbeat_s``, ``heartbeat_timeout_s``,
``max_body_bytes``) come from :class:`asrhub.protocol.ListenerSettings`. What needs the hub
(the engines exist; the language is one the hub knows) is checked by :func:`check` when the hub
builds its listeners: ``asrhub check-config`` and ``asrhub serve`` refuse the same configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from asrhub.language import parse_language
from asrhub.protocol import ListenerSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub

log = structlog.get_logger("asrhub.vad_stream")


_warned: set[str] = set()


def _warn_deprecated_token_mode() -> None:
    if "token" not in _warned:  # once per process: settings are validated at each (re)load
        _warned.add("token")
        log.warning("deprecated_setting", section="protocols.vad_stream",
                    key="speaker_overwrite", value="token", use="owner",
                    hint='"token" now means "owner": only the token that registered a voiceprint '
                         "(or the admin token) may overwrite it")


@dataclass(frozen=True)
class VadStreamSettings(ListenerSettings):
    # --- VAD segmentation (dual hysteresis on top of the hub's VAD engine)
    vad_speech_frames: int = 3
    vad_silence_frames: int = 10
    vad_frame_ms: int = 32
    prefix_padding_ms: int = 300
    buffer_max_s: float = 2.0
    max_segment_s: float = 30.0
    # --- quality filters (streaming mode only; batch mode skips them, as the seed says)
    energy_threshold: float = 0.01
    speech_ratio_threshold: float = 0.3
    min_segment_s: float = 0.3
    min_text_length: int = 2
    # --- recognition
    # A language code or a seed name ("中文"); "" = the ASR engine's own setting. When that
    # means detection, the language found in the session's first long segment is kept for the
    # rest of the session (detection costs an encoder pass per segment).
    language: str = ""
    asr_engine: str = ""  # "" = [engines] asr
    # --- noise suppression
    ns_enabled: bool = False
    ns_engine: str = ""  # "" = [engines] denoise
    # --- batch mode
    batch_min_s: float = 0.3
    batch_max_s: float = 300.0
    progress_interval_bytes: int = 64000  # one "receiving" progress message per this many bytes
    # --- speakers
    speaker_threshold: float = 0.0
    speaker_min_registration_s: float = 3.0
    speaker_max_registration_s: float = 30.0
    speaker_verification_required: bool = False
    speaker_verification_default_user: str = ""
    # Who may register an id that already has a voiceprint (the seed: re-registering
    # overwrites). Each voiceprint records its owner: the scope of the token its client
    # presented ("" without one). "owner": the [server] admin_token, a client presenting the
    # owner's token, and the connection that registered it; a voiceprint without an owner
    # (registered without a token, or stored before owners were) only the admin token and
    # that connection. "always": anyone (the seed). "never": no client, the admin token
    # included (`asrhub speakers delete ID` on the server removes one). "token" is the old
    # name of "owner" (deprecated).
    speaker_overwrite: str = "owner"
    speaker_max_voiceprints: int = 1000  # new ids are refused once the store holds this many
    speaker_registrations_per_minute: int = 6  # per client address (0 = no limit)
    # --- transport (the seed's 连接超时 60 s / Ping 间隔 20 s) and bounds
    heartbeat_s: float = 20.0
    heartbeat_timeout_s: float = 40.0
    max_backlog_s: float = 30.0  # streaming audio waiting for the VAD
    max_pending_jobs: int = 16  # segments / batch / registration jobs waiting for a model
    # --- the HTTP service on the extra "static" listener
    web_dir: str = ""  # "" = the bundled web/ folder

    def validate(self) -> None:
        super().validate()
        for name, value in vars(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        positive = ("vad_speech_frames", "vad_silence_frames", "vad_frame_ms", "buffer_max_s",
                    "max_segment_s", "batch_max_s", "progress_interval_bytes", "max_backlog_s",
                    "max_pending_jobs", "speaker_max_registration_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        not_negative = ("prefix_padding_ms", "energy_threshold", "speech_ratio_threshold",
                        "min_segment_s", "min_text_length", "batch_min_s", "speaker_threshold",
                        "speaker_min_registration_s")
        for name in not_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.speech_ratio_threshold > 1:
            raise ValueError("speech_ratio_threshold is a fraction from 0 to 1")
        if self.prefix_padding_ms / 1000 > self.buffer_max_s:
            raise ValueError("prefix_padding_ms must fit in buffer_max_s")
        if self.speaker_min_registration_s > self.speaker_max_registration_s:
            raise ValueError("speaker_min_registration_s exceeds speaker_max_registration_s")
        if self.batch_min_s > self.batch_max_s:
            raise ValueError("batch_min_s exceeds batch_max_s")
        if self.speaker_overwrite not in ("owner", "always", "never", "token"):
            raise ValueError('speaker_overwrite must be "owner", "always" or "never"')
        if self.speaker_overwrite == "token":
            _warn_deprecated_token_mode()
        if self.speaker_max_voiceprints < 1 or self.speaker_registrations_per_minute < 0:
            raise ValueError("speaker_max_voiceprints must be >= 1, "
                             "speaker_registrations_per_minute >= 0")
        if self.speaker_verification_required and not self.speaker_verification_default_user.strip():
            raise ValueError("speaker_verification_required needs speaker_verification_default_user")
        if self.language:
            try:
                parse_language(self.language)
            except ValueError as exc:
                raise ValueError(f"language: {exc}") from None

    @property
    def frame_samples(self) -> int:
        return self.vad_frame_ms * 16


def check(settings: VadStreamSettings, hub: Hub) -> None:
    """What the settings cannot see alone: the engines they need exist (raises ValueError).
    Run by the hub for an enabled listener, in ``check-config`` as in ``serve``."""
    needed = {"asr": hub.engine_name("asr", settings.asr_engine or None), "vad": hub.engine_name("vad")}
    for kind, name in needed.items():
        if name == "none":
            raise ValueError(f"needs an {kind} engine ([engines] {kind} is \"none\")")
    if settings.asr_engine and settings.asr_engine not in hub.engine_specs["asr"]:
        raise ValueError(f"asr_engine: no ASR engine named {settings.asr_engine!r} (installed: "
                         f"{', '.join(sorted(hub.engine_specs['asr'])) or 'none'})")
    if settings.ns_enabled:
        name = hub.engine_name("denoise", settings.ns_engine or None)
        installed = ", ".join(sorted(hub.engine_specs["denoise"])) or "none"
        if name == "none":
            raise ValueError("ns_enabled needs a noise suppressor: set [engines] denoise or "
                             f"ns_engine (installed: {installed})")
        if name not in hub.engine_specs["denoise"]:
            raise ValueError(f"ns_engine: no noise suppressor named {name!r} (installed: {installed})")

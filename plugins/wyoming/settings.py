"""``[protocols.wyoming]`` settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from asrhub.protocol import ListenerSettings


@dataclass(frozen=True)
class WyomingSettings(ListenerSettings):
    # Largest event payload (an audio-chunk's PCM). Home Assistant sends 1024-sample chunks
    # (2 KiB); a payload over this closes the connection with an ``error`` event.
    max_message_bytes: int = 1024 * 1024
    # Largest JSON header line plus its additional data (a transcribe event may carry the
    # names of every Home Assistant entity as ``transcript_names``).
    max_header_bytes: int = 256 * 1024
    # A connection that sends no event for this long is closed (0 = never). Nothing is read
    # while a transcript is being made, so a slow transcription is never cut by it.
    idle_timeout_s: float = 120.0
    # Recognition language when the transcribe event names none ("" = the engine's default).
    language: str = ""
    # Stream transcripts (transcript-start, a transcript-chunk per finished utterance while
    # audio still arrives, transcript-stop after the transcript) to every client; a client
    # overrides it per request with transcribe's context {"transcript_streaming": true|false}.
    transcript_streaming: bool = True
    # Audio is handed to the recogniser in pieces of this much (it decides when to decode). A
    # pause is noticed at the end of a piece: small pieces start the decode at a pause sooner.
    feed_interval_s: float = 0.1
    # Unprocessed audio a request may hold; past it the server stops reading the socket until
    # the recogniser catches up (TCP backpressure), so memory stays bounded.
    max_backlog_s: float = 20.0
    # Speaker identification: with enrolled voiceprints, the transcript's context carries
    # {"speaker": {"id", "name", "score"}} (or {"speaker": null} when nobody matches).
    identify_speakers: bool = False
    # Cosine score a voiceprint must reach (0 = the speaker engine's own default).
    speaker_threshold: float = 0.0
    # The first this-many seconds of a request are embedded for identification.
    speaker_max_s: float = 20.0
    # Announce the listener with zeroconf (mDNS ``_wyoming._tcp.local.``) so Home Assistant
    # discovers it. Off by default: it sends multicast on the local network.
    zeroconf: bool = False
    # The announced service name ("" = "asrhub-<hostname>") and address ("" = the listener's
    # host when it is a specific address, else the address of the default route).
    zeroconf_name: str = ""
    zeroconf_host: str = ""

    def validate(self) -> None:
        super().validate()
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be >= 1024")
        if self.idle_timeout_s < 0 or not math.isfinite(self.idle_timeout_s):
            raise ValueError("idle_timeout_s must be >= 0 (0 = no idle timeout)")
        if not 0.02 <= self.feed_interval_s <= 10.0:
            raise ValueError("feed_interval_s must be between 0.02 and 10 seconds")
        if self.max_backlog_s < max(1.0, 2 * self.feed_interval_s):
            raise ValueError("max_backlog_s must be at least 1 s and twice feed_interval_s")
        if not -1.0 <= self.speaker_threshold <= 1.0:
            raise ValueError("speaker_threshold must be between -1 and 1 (0 = engine default)")
        if not 1.0 <= self.speaker_max_s <= 300.0:
            raise ValueError("speaker_max_s must be between 1 and 300 seconds")
        if len(self.zeroconf_name) > 63:
            raise ValueError("zeroconf_name must be at most 63 characters (a DNS label)")

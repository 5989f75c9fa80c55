"""FunASR's runtime WebSocket protocol: the wire format only (no aiohttp, no engines).

Source: FunASR's ``runtime/docs/websocket_protocol.md`` (and ``_zh``) and what its current
Python server and client do (``runtime/python/websocket/funasr_wss_{server,client}.py``).

Client → server, on one WebSocket:

- a JSON text message that configures an input (the "first message")::

    {"mode": "offline" | "online" | "2pass", "wav_name": "...", "wav_format": "pcm" | "mp3" ...,
     "audio_fs": 16000, "is_speaking": true, "chunk_size": [5, 10, 5], "chunk_interval": 10,
     "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 0,
     "hotwords": "{\\"阿里巴巴\\": 20}", "itn": true, "svs_lang": "auto", "svs_itn": true}

- binary messages of audio (raw PCM int16 LE mono at ``audio_fs``; in ``offline`` mode also
  the bytes of a container file, ``wav_format`` naming its extension);
- ``{"is_speaking": false}`` ends the input (``"is_end": true`` asks for an acknowledgement
  once every result of the input has been sent); ``{"is_speaking": true}`` opens a new input
  with the previous configuration.

Server → client: results ``{"mode", "wav_name", "text", "is_final", "timestamp",
"stamp_sents"}`` (``timestamp``/``stamp_sents`` only where the engine gives times), the
end-of-input acknowledgement ``{"mode", "wav_name", "is_final", "is_end": true}`` (with
``"is_final": false`` and an ``"error"`` string when the input had problems), and asrhub's
error envelope (FunASR's server has none; see :func:`error_envelope`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from asrhub.protocol import ProtocolError, loads
from asrhub.text import encodable

Mode = Literal["offline", "online", "2pass"]
MODES: tuple[str, ...] = ("offline", "online", "2pass")

# Error codes (FunASR's protocol has none; these are asrhub's, in the error envelope).
BAD_MESSAGE = "bad_message"  # not JSON, not an object, a field of the wrong type
BAD_CONFIG = "bad_config"  # a configuration value the server cannot use (mode, audio_fs...)
NO_INPUT = "no_input"  # audio with no input open (before the first message, after the end)
BAD_AUDIO = "bad_audio"  # odd-length PCM, bytes that are plainly not audio, undecodable file
INPUT_TOO_LARGE = "input_too_large"  # an offline input over max_offline_bytes
BACKLOG_FULL = "backlog_full"  # audio arrives faster than it can be recognised
ENGINE_ERROR = "engine_error"  # recognition failed
SERVER_BUSY = "server_busy"
INTERNAL_ERROR = "internal_error"
TOO_BIG = "message_too_big"
TOO_MANY_CONNECTIONS = "too_many_connections"

PCM_FORMATS = ("pcm", "raw", "s16le")
SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_WAV_NAME = 256
MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 64
_LANGUAGE = re.compile(r"^([A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?|auto)$")
# Keys of the configuration message; any other key is ignored (FunASR clients add their own).
CONFIG_KEYS = ("mode", "wav_name", "wav_format", "audio_fs", "chunk_size", "chunk_interval",
               "encoder_chunk_look_back", "decoder_chunk_look_back", "hotwords", "itn",
               "svs_lang", "svs_itn")


@dataclass(frozen=True)
class InputConfig:
    """How one input is recognised (the first message, with FunASR's defaults)."""

    mode: Mode = "2pass"
    wav_name: str = "microphone"
    wav_format: str = "pcm"
    audio_fs: int = 16000
    chunk_size: tuple[int, int, int] = (5, 10, 5)
    chunk_interval: int = 10
    encoder_chunk_look_back: int = 4
    decoder_chunk_look_back: int = 0
    hotwords: dict[str, int] = field(default_factory=dict)
    itn: bool = True
    svs_lang: str = "auto"
    svs_itn: bool = True

    @property
    def is_pcm(self) -> bool:
        return self.wav_format in PCM_FORMATS

    @property
    def language(self) -> str | None:
        """The recognition language asked for (``svs_lang``), None for the server's default."""
        return None if self.svs_lang == "auto" else self.svs_lang

    @property
    def prompt(self) -> str | None:
        """Hotwords as an engine prompt ("阿里巴巴, 通义实验室"), None without hotwords."""
        return ", ".join(self.hotwords) if self.hotwords else None


@dataclass(frozen=True)
class ClientMessage:
    """One JSON text message: the configuration keys it carried (``changes``), and
    ``is_speaking`` / ``is_end`` when present."""

    changes: dict[str, Any]
    is_speaking: bool | None
    is_end: bool

    def apply(self, config: InputConfig) -> InputConfig:
        config = replace(config, **self.changes)
        if not config.is_pcm and config.mode != "offline":
            raise ProtocolError(BAD_CONFIG, f"mode {config.mode!r} takes raw PCM audio only "
                                f"(wav_format \"pcm\"); send {config.wav_format!r} files in "
                                "offline mode", fatal=True)
        return config


# ----------------------------------------------------------------------------- parsing


def _bad(message: str, code: str = BAD_CONFIG) -> ProtocolError:
    return ProtocolError(code, message, fatal=True)


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(f"\"{key}\" must be true or false, not {value!r:.40}", BAD_MESSAGE)


def _int(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data[key]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"\"{key}\" must be an integer, not {value!r:.40}", BAD_MESSAGE)
    if not low <= value <= high:
        raise _bad(f"\"{key}\" must be between {low} and {high}, not {value}")
    return value


def _chunk_size(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or len(value) != 3:
        raise _bad(f"\"chunk_size\" must be three numbers such as [5, 10, 5], not {value!r:.60}",
                   BAD_MESSAGE)
    out = []
    for part in value:
        if isinstance(part, str) and part.isdigit():
            part = int(part)
        if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part <= 100:
            raise _bad(f"\"chunk_size\" must be three numbers 0-100 such as [5, 10, 5], "
                       f"not {value!r:.60}")
        out.append(part)
    if out[1] < 1:
        raise _bad("\"chunk_size\"[1] (the chunk, in 60 ms frames) must be at least 1")
    return out[0], out[1], out[2]


def parse_hotwords(value: Any) -> dict[str, int]:
    """FunASR's hotwords: a JSON object string ``{"word": weight}`` (the documented form), an
    object, or plain words separated by commas, spaces or new lines (what the Python client
    sends when given a hotword file: "阿里巴巴,通义实验室")."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = loads(text)
            except ValueError:
                raise _bad("\"hotwords\" looks like JSON but is not: use "
                           "\"{\\\"word\\\": 20, ...}\" or words separated by commas") from None
        else:
            words = [w for w in re.split(r"[,\s，、]+", text) if w]
            value = {w: 20 for w in words}
    if not isinstance(value, dict):
        raise _bad("\"hotwords\" must be a JSON object of word → weight, or words separated "
                   "by commas", BAD_MESSAGE)
    if len(value) > MAX_HOTWORDS:
        raise _bad(f"at most {MAX_HOTWORDS} hotwords, got {len(value)}")
    out: dict[str, int] = {}
    for word, weight in value.items():
        word = str(word).strip()
        if not word or len(word) > MAX_HOTWORD_CHARS:
            raise _bad(f"a hotword must have 1 to {MAX_HOTWORD_CHARS} characters: {word[:80]!r}")
        if not encodable(word):
            raise _bad(f"a hotword must be valid Unicode text: {word[:80]!r}")
        if isinstance(weight, str) and weight.strip().isdigit():
            weight = int(weight)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _bad(f"the weight of hotword {word!r} must be a number, not {weight!r:.40}")
        out[word] = int(weight)
    return out


def parse_message(text: str) -> ClientMessage:
    """One JSON text message. Raises :class:`ProtocolError` (``bad_message`` for what is not
    a JSON object, fatal ``bad_config``/``bad_message`` for unusable configuration values)."""
    try:
        data = loads(text)
    except ValueError as exc:
        raise ProtocolError(BAD_MESSAGE, f"text messages must be JSON objects ({exc})"[:300]) from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_MESSAGE, "a text message must be a JSON object, e.g. "
                            "{\"mode\": \"2pass\", \"is_speaking\": true}")
    changes: dict[str, Any] = {}
    if "mode" in data:
        mode = data["mode"]
        if mode not in MODES:
            raise _bad(f"unsupported mode {mode!r:.40} (offline, online or 2pass)")
        changes["mode"] = mode
    if "wav_name" in data:
        name = data["wav_name"]
        if not isinstance(name, str | int) or isinstance(name, bool):
            raise _bad(f"\"wav_name\" must be a string, not {name!r:.40}", BAD_MESSAGE)
        name = str(name)
        if len(name) > MAX_WAV_NAME:
            raise _bad(f"\"wav_name\" is longer than {MAX_WAV_NAME} characters")
        changes["wav_name"] = name or "microphone"
    if "wav_format" in data:
        fmt = data["wav_format"]
        if not isinstance(fmt, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,16}", fmt):
            raise _bad(f"\"wav_format\" must be a file extension such as \"pcm\" or \"mp3\", "
                       f"not {fmt!r:.40}", BAD_MESSAGE)
        changes["wav_format"] = fmt.lower().lstrip(".")
    if "audio_fs" in data:
        rate = _int(data, "audio_fs", 1, 192000)
        if rate not in SAMPLE_RATES:
            raise _bad(f"\"audio_fs\" {rate} is not supported "
                       f"({', '.join(map(str, SAMPLE_RATES))})")
        changes["audio_fs"] = rate
    if "chunk_size" in data:
        changes["chunk_size"] = _chunk_size(data["chunk_size"])
    if "chunk_interval" in data:
        changes["chunk_interval"] = _int(data, "chunk_interval", 1, 1000)
    for key in ("encoder_chunk_look_back", "decoder_chunk_look_back"):
        if key in data:
            changes[key] = _int(data, key, 0, 100)
    if "hotwords" in data:
        changes["hotwords"] = parse_hotwords(data["hotwords"])
    for key in ("itn", "svs_itn"):
        if key in data:
            changes[key] = _bool(data, key)
    if "svs_lang" in data:
        lang = data["svs_lang"]
        if not isinstance(lang, str) or not _LANGUAGE.match(lang):
            raise _bad(f"\"svs_lang\" must be \"auto\" or a language code such as \"zh\", "
                       f"not {lang!r:.40}")
        changes["svs_lang"] = lang.lower()
    is_speaking = _bool(data, "is_speaking") if "is_speaking" in data else None
    is_end = _bool(data, "is_end") if "is_end" in data else False
    return ClientMessage(changes=changes, is_speaking=is_speaking, is_end=is_end)


# ----------------------------------------------------------------------------- results


def result(config: InputConfig, mode: str, text: str, *, is_final: bool,
           timestamp: list[list[int]] | None = None,
           stamp_sents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A recognition result. ``timestamp`` goes out as the document shows it: a string
    "[[100,200],[200,500]]" (ms); both time fields only when there are times to give."""
    message: dict[str, Any] = {"mode": mode, "wav_name": config.wav_name, "text": text,
                               "is_final": is_final}
    if timestamp:
        message["timestamp"] = json.dumps(timestamp, separators=(",", ":"))
    if stamp_sents:
        message["stamp_sents"] = stamp_sents
    return message


def acknowledgement(config: InputConfig, errors: list[str]) -> dict[str, Any]:
    """The answer to ``{"is_speaking": false, "is_end": true}`` after the input's last result."""
    message: dict[str, Any] = {"mode": config.mode, "wav_name": config.wav_name,
                               "is_final": not errors, "is_end": True}
    if errors:
        message["error"] = "; ".join(errors)[:2000]
    return message


def error_envelope(err: ProtocolError) -> dict[str, Any]:
    """asrhub's error message: ``{"wav_name", "is_final": false, "error": <message>,
    "code": <code>}``, plus ``"is_end": true`` when the server then closes the connection.

    It has no ``mode``, so FunASR's client logs it without printing it as text; with
    ``is_end`` (a fatal error) the client stops waiting and reports ``error`` as the reason
    the input failed, exactly as for a failed acknowledgement.
    """
    message: dict[str, Any] = {"is_final": False, "error": err.message, "code": err.code}
    wav_name = err.extra.get("wav_name")
    if wav_name is not None:
        message = {"wav_name": wav_name, **message}
    if err.fatal:
        message["is_end"] = True
    return message

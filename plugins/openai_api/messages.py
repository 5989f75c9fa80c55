"""OpenAI's speech API on the wire: request fields, response bodies, SSE events, error
envelopes (no aiohttp here).

Shapes follow the official SDK's types (``openai.types.audio``): ``Transcription``
(``json``), ``TranscriptionVerbose`` / ``TranslationVerbose`` (``verbose_json``),
``TranscriptionDiarized`` (``diarized_json``), the stream events ``transcript.text.delta`` /
``transcript.text.segment`` / ``transcript.text.done``, and ``{"error": {message, type, param,
code}}`` for every error.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from asrhub.engine import Segment, Transcript
from asrhub.formats import to_srt, to_vtt
from asrhub.protocol import ProtocolError, dumps
from asrhub.text import join_texts

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("segment", "word")
LIST_FIELDS = ("timestamp_granularities", "known_speaker_names", "known_speaker_references",
               "include")
TEXT_FIELDS = ("model", "language", "prompt", "response_format", "temperature", "stream",
               "chunking_strategy")
MAX_FIELD_BYTES = 64 * 1024  # one plain form field (a prompt, a name)
MAX_KNOWN_SPEAKERS = 4  # as OpenAI

# Error codes (the ``code`` of OpenAI's envelope).
INVALID_VALUE = "invalid_value"
MISSING_PARAMETER = "missing_required_parameter"
UNKNOWN_MODEL = "model_not_found"
INVALID_FILE = "invalid_file_format"
FILE_TOO_LARGE = "file_too_large"
UNSUPPORTED_MEDIA = "unsupported_media_type"
RATE_LIMITED = "rate_limit_exceeded"
SERVER_BUSY = "server_busy"
SERVER_ERROR = "server_error"
NOT_FOUND = "not_found"
INVALID_API_KEY = "invalid_api_key"

# verbose_json says the language by name, as Whisper's tokenizer names it.
LANGUAGE_NAMES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "yue": "cantonese", "fa": "persian", "sk": "slovak", "sr": "serbian", "bn": "bengali",
}


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    if status == 401:
        return "authentication_error"
    return "invalid_request_error"


def error_body(message: str, *, status: int, code: str | None, param: str | None = None) -> dict:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": error_type(status), "param": param,
                      "code": code}}


def error_from(err: ProtocolError) -> dict:
    return error_body(err.message, status=err.status, code=str(err.code), param=err.param)


def bad_request(message: str, *, param: str | None = None, code: str = INVALID_VALUE,
                status: int = 400) -> ProtocolError:
    return ProtocolError(code, message, status=status, param=param)


# ----------------------------------------------------------------------------- requests


@dataclass
class AudioRequest:
    """The form fields of ``/v1/audio/transcriptions`` and ``/v1/audio/translations``."""

    task: Literal["transcribe", "translate"]
    model: str
    response_format: ResponseFormat = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    granularities: tuple[str, ...] = ()
    stream: bool = False
    known_speaker_names: list[str] = field(default_factory=list)
    known_speaker_references: list[str] = field(default_factory=list)

    @property
    def words(self) -> bool:
        return self.response_format == "verbose_json" and "word" in self.granularities

    @property
    def needs_segments(self) -> bool:
        """Segment times and boundaries are part of the answer."""
        return self.response_format in ("srt", "vtt", "verbose_json", "diarized_json")

    @property
    def segments(self) -> bool:
        return not self.granularities or "segment" in self.granularities


def field_name(name: str) -> str:
    """``timestamp_granularities[]`` (how the SDK sends a list) → ``timestamp_granularities``."""
    return name[:-2] if name.endswith("[]") else name


def parse_request(task: Literal["transcribe", "translate"], fields: Mapping[str, str],
                  lists: Mapping[str, Sequence[str]]) -> AudioRequest:
    """Validate the text fields of the form (the file is the caller's)."""
    model = fields.get("model", "").strip()
    if not model:
        raise bad_request("you must provide a model parameter", param="model",
                          code=MISSING_PARAMETER)
    fmt = fields.get("response_format", "json").strip() or "json"
    allowed = RESPONSE_FORMATS if task == "transcribe" else RESPONSE_FORMATS[:-1]
    if fmt not in allowed:
        raise bad_request(f"response_format must be one of {', '.join(allowed)}; got {fmt!r}",
                          param="response_format")
    temperature = None
    if fields.get("temperature", "").strip():
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            raise bad_request("temperature must be a number", param="temperature") from None
        if not math.isfinite(temperature) or not 0.0 <= temperature <= 1.0:
            raise bad_request("temperature must be between 0 and 1", param="temperature")
    stream = _boolean(fields.get("stream", "false"), "stream")
    granularities = tuple(dict.fromkeys(g.strip() for g in lists.get("timestamp_granularities", ())))
    for value in granularities:
        if value not in GRANULARITIES:
            raise bad_request(f"timestamp_granularities must be 'segment' and/or 'word'; got "
                              f"{value!r}", param="timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise bad_request("timestamp_granularities needs response_format verbose_json",
                          param="timestamp_granularities")
    names = [n.strip() for n in lists.get("known_speaker_names", ())]
    references = list(lists.get("known_speaker_references", ()))
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise bad_request(f"at most {MAX_KNOWN_SPEAKERS} known speakers", param="known_speaker_names")
    if len(references) > len(names) or any(not n for n in names):
        raise bad_request("known_speaker_references needs one non-empty name in "
                          "known_speaker_names for each", param="known_speaker_names")
    if (names or references) and fmt != "diarized_json":
        raise bad_request("known speakers need response_format diarized_json",
                          param="known_speaker_names")
    language = fields.get("language", "").strip() or None
    prompt = fields.get("prompt", "").strip() or None
    return AudioRequest(task=task, model=model, response_format=fmt,  # type: ignore[arg-type]
                        language=language, prompt=prompt, temperature=temperature,
                        granularities=granularities, stream=stream,
                        known_speaker_names=names, known_speaker_references=references)


def _boolean(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise bad_request(f"{name} must be true or false", param=name)


def data_url_bytes(url: str, *, param: str) -> bytes:
    """The bytes of a ``data:<type>;base64,<data>`` URL (a known speaker's sample)."""
    head, sep, payload = url.partition(",")
    if not (sep and head.startswith("data:") and head.endswith(";base64")):
        raise bad_request("known_speaker_references must be data URLs (data:audio/wav;base64,...)",
                          param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("a known speaker reference is not valid base64", param=param) from None


# ----------------------------------------------------------------------------- responses


def usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(duration, 3)}


def language_name(code: str | None) -> str:
    if not code:
        return ""
    return LANGUAGE_NAMES.get(code, code)


def verbose_segment(index: int, seg: Segment) -> dict[str, Any]:
    confidence = seg.confidence if seg.confidence and seg.confidence > 0 else None
    return {
        "id": index, "seek": 0, "start": round(seg.start, 3), "end": round(seg.end, 3),
        "text": seg.text, "tokens": [], "temperature": 0.0,
        "avg_logprob": round(math.log(confidence), 4) if confidence else 0.0,
        "compression_ratio": 0.0, "no_speech_prob": 0.0,
    }


def speaker_label(index: int) -> str:
    """A, B, ... Z, AA, AB, ... (OpenAI labels unnamed speakers with capital letters)."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def render(request: AudioRequest, transcript: Transcript) -> tuple[str, str]:
    """(body, content type) of the answer in ``request.response_format``."""
    fmt = request.response_format
    if fmt == "text":
        return transcript.text + "\n", "text/plain"
    if fmt == "srt":
        return to_srt(transcript), "text/plain"
    if fmt == "vtt":
        return to_vtt(transcript), "text/vtt"
    body: dict[str, Any]
    if fmt == "json":
        body = {"text": transcript.text}
        if request.task == "transcribe":
            body["usage"] = usage(transcript.duration)
    elif fmt == "verbose_json":
        language = "english" if request.task == "translate" else language_name(transcript.language)
        body = {"task": request.task, "language": language,
                "duration": round(transcript.duration, 3), "text": transcript.text}
        if request.segments:
            body["segments"] = [verbose_segment(i, s) for i, s in enumerate(transcript.segments)]
        if request.words:
            body["words"] = [{"word": w.word.strip(), "start": round(w.start, 3),
                              "end": round(w.end, 3)}
                             for s in transcript.segments for w in s.words]
        if request.task == "transcribe":
            body["usage"] = usage(transcript.duration)
    else:  # diarized_json
        body = {"task": "transcribe", "duration": round(transcript.duration, 3),
                "text": transcript.text,
                "segments": [diarized_segment(i, s) for i, s in enumerate(transcript.segments)],
                "usage": usage(transcript.duration)}
    return dumps(body), "application/json"


def diarized_segment(index: int, seg: Segment) -> dict[str, Any]:
    return {"type": "transcript.text.segment", "id": f"seg_{index}", "start": round(seg.start, 3),
            "end": round(seg.end, 3), "text": seg.text.strip(), "speaker": seg.speaker or "A"}


def joined_text(segments: Sequence[Segment]) -> str:
    return join_texts([s.text for s in segments])


# ----------------------------------------------------------------------------- SSE


def sse(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event (``data:`` only, as OpenAI sends them)."""
    return f"data: {dumps(event)}\n\n".encode()


def delta_event(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": text}


def done_event(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text}


# ----------------------------------------------------------------------------- models


def model_object(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "asrhub", **extra}


def model_list(models: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": list(models)}


"""``/v1/audio/transcriptions``, ``/v1/audio/translations`` and ``/v1/models``.

One request: the multipart form is read as it arrives (the file spooled to the state
directory, never held in memory; over ``max_body_bytes`` → 413), the fields validated, then the
file is decoded and recognised a piece at a time (:class:`~.pieces.PieceReader`), every step a
call in the hub's inference executor at ``Priority.BATCH`` so live sessions keep their latency.
With ``stream=true`` each piece's text goes out as a ``transcript.text.delta`` event as soon as
it is recognised, while the rest of the file is still undecoded. A client that goes away stops
the work at the next piece.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from asrhub.audio import AudioError, decode_bytes
from asrhub.diarize import embed_spans, labels_from_embeddings, name_clusters
from asrhub.engine import SAMPLE_RATE, EngineError, Segment, Transcript, Word
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority
from asrhub.formats import wants_word_timestamps
from asrhub.protocol import ProtocolError
from asrhub.segmenter import plan_pieces
from asrhub.text import join_texts

from . import messages as m
from .pieces import PieceReader
from .settings import OpenAISettings

if TYPE_CHECKING:
    from asrhub.hub import Hub
    from asrhub.protocol import ProtocolContext

log = structlog.get_logger("asrhub.openai_api")

UPLOAD_CHUNK = 64 * 1024
PAD_S = 0.2  # speech regions are recognised with this much audio either side
JOIN_GAP_S = 0.3  # regions closer than this (after padding) are recognised together
MERGE_S = 20.0  # json/text: consecutive regions recognised in one call up to this long
Emit = Callable[[str], Awaitable[None]]


class ClientGone(Exception):
    """The client closed the connection: stop working for it."""


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None
    filename: str = "file"
    size: int = 0


SERVICE_KEY: web.AppKey[AudioService] = web.AppKey("openai_api_service")


def error_response(err: ProtocolError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(m.error_from(err), status=err.status, headers=headers)


class AudioService:
    def __init__(self, ctx: ProtocolContext) -> None:
        self.ctx = ctx
        self.hub: Hub = ctx.hub
        self.settings: OpenAISettings = ctx.settings
        self.created = int(time.time())
        self.active = 0  # requests being served now
        self.requests = 0
        self.pieces = 0  # pieces decoded, over all requests

    # ------------------------------------------------------------------ models

    def model_table(self) -> dict[str, str]:
        """Model id → ASR engine name."""
        default = self.hub.engine_name("asr")
        table = {model: engine or default for model, engine in self.settings.models.items()}
        table.setdefault(default, default)
        return table

    def engine_for(self, model: str) -> str:
        table = self.model_table()
        if model not in table:
            raise m.bad_request(f"the model {model!r} does not exist; available models: "
                                f"{', '.join(sorted(table))}", param="model", code=m.UNKNOWN_MODEL)
        return table[model]

    def _model(self, model_id: str, engine: str) -> dict[str, Any]:
        loaded = self.hub.loaded_engine("asr", engine)
        return m.model_object(model_id, self.created, engine=engine, loaded=loaded is not None,
                              engine_model=getattr(loaded, "model_name", None))

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response(m.model_list([self._model(k, v)
                                               for k, v in sorted(self.model_table().items())]))

    async def get_model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        table = self.model_table()
        if model_id not in table:
            return error_response(m.bad_request(
                f"the model {model_id!r} does not exist; available models: "
                f"{', '.join(sorted(table))}", param="model", code=m.UNKNOWN_MODEL, status=404))
        return web.json_response(self._model(model_id, table[model_id]))

    # ------------------------------------------------------------------ audio

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "translate")

    async def _handle(self, request: web.Request, task: Any) -> web.StreamResponse:
        settings = self.settings
        retry = {"Retry-After": str(settings.retry_after_s)}
        if self.active >= settings.max_concurrent_requests:
            self.ctx.hub.count_error(self.ctx.name, m.RATE_LIMITED)
            return error_response(m.bad_request(
                f"too many transcriptions at once on this server (limit "
                f"{settings.max_concurrent_requests}); retry after {settings.retry_after_s} s",
                code=m.RATE_LIMITED, status=429), retry)
        self.active += 1
        self.requests += 1
        upload = Upload()
        reader: PieceReader | None = None
        started = time.perf_counter()
        try:
            upload = await self._receive(request)
            req = m.parse_request(task, upload.fields, upload.lists)
            if upload.path is None:
                raise m.bad_request("you must provide a file", param="file", code=m.MISSING_PARAMETER)
            engine_name = self.engine_for(req.model)
            reader = PieceReader(upload.path, settings.piece_seconds, name=upload.filename)
            try:
                await self._run(reader.open)
            except AudioError as exc:
                raise m.bad_request(f"the file is not audio the server can decode: {exc}",
                                    param="file", code=m.INVALID_FILE) from None
            references = await self._known_speakers(req) if req.response_format == "diarized_json" else {}
            if req.stream:
                return await self._stream(request, req, reader, engine_name, references)
            transcript = await self._recognise(request, req, reader, engine_name, references)
            self._account(transcript.duration, time.perf_counter() - started)
            body, content_type = m.render(req, transcript)
            log.info("openai_request", task=task, model=req.model, format=req.response_format,
                     audio_s=round(transcript.duration, 2),
                     peak_audio_s=round(reader.peak_samples / SAMPLE_RATE, 1),
                     processing_s=round(time.perf_counter() - started, 3))
            return web.Response(text=body, content_type=content_type, charset="utf-8")
        except ProtocolError as err:
            self.hub.count_error(self.ctx.name, err.code)
            return error_response(err, retry if err.status in (429, 503) else None)
        except ClientGone:
            log.info("openai_client_gone", task=task)
            return web.Response(status=499)
        finally:
            self.active -= 1
            if reader is not None:
                reader.close()
            if upload.path is not None:
                upload.path.unlink(missing_ok=True)

    def _account(self, audio_s: float, processing_s: float) -> None:
        """Audio and processing seconds of a finished request, as sessions count theirs."""
        counters = self.hub.counter(self.ctx.name)
        counters.audio_seconds += audio_s
        counters.processing_seconds += processing_s
        self.ctx.metrics.audio_seconds.labels(protocol=self.ctx.name).inc(audio_s)

    # ------------------------------------------------------------------ receiving

    async def _receive(self, request: web.Request) -> Upload:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large(limit)
        if request.content_type != "multipart/form-data":
            raise m.bad_request(f"the request must be multipart/form-data, not "
                                f"{request.content_type!r}", code=m.UNSUPPORTED_MEDIA, status=415)
        upload = Upload()
        try:
            parts = await request.multipart()
            while True:
                part = await parts.next()
                if part is None:
                    break
                if not hasattr(part, "read_chunk"):  # a nested multipart: not in this API
                    raise m.bad_request("nested multipart bodies are not supported")
                name = m.field_name(part.name or "")
                if name == "file":
                    if upload.path is not None:
                        raise m.bad_request("only one file per request", param="file")
                    upload.filename = os.path.basename(part.filename or "file")[:200] or "file"
                    upload.path = self._spool_path(upload.filename)
                    with upload.path.open("wb") as fh:
                        while chunk := await part.read_chunk(UPLOAD_CHUNK):  # type: ignore[union-attr]
                            upload.size += len(chunk)
                            if upload.size > limit:
                                raise self._too_large(limit)
                            fh.write(chunk)
                    continue
                cap = limit if name == "known_speaker_references" else m.MAX_FIELD_BYTES
                data = bytearray()
                while chunk := await part.read_chunk(UPLOAD_CHUNK):  # type: ignore[union-attr]
                    data += chunk
                    upload.size += len(chunk)
                    if upload.size > limit:
                        raise self._too_large(limit)
                    if len(data) > cap:
                        raise m.bad_request(f"the field {name!r} is longer than {cap} bytes",
                                            param=name)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise m.bad_request(f"the field {name!r} is not UTF-8 text", param=name) from None
                if name in m.LIST_FIELDS:
                    upload.lists.setdefault(name, []).append(text)
                elif name in m.TEXT_FIELDS:
                    upload.fields[name] = text
                # Other fields OpenAI may add later are ignored, as OpenAI's SDKs send them.
        except ProtocolError:
            self._discard(upload)
            raise
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # a malformed body
            self._discard(upload)
            raise m.bad_request(f"malformed multipart/form-data body: {exc}") from None
        except BaseException:
            self._discard(upload)
            raise
        return upload

    @staticmethod
    def _discard(upload: Upload) -> None:
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)
            upload.path = None

    def _spool_path(self, filename: str) -> Path:
        # The state directory, not /tmp: /tmp is often RAM (tmpfs).
        folder = self.hub.state_dir / "openai_api" / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = Path(filename).suffix[:12] if Path(filename).suffix.isascii() else ""
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=folder)
        os.close(fd)
        return Path(name)

    @staticmethod
    def _too_large(limit: int) -> ProtocolError:
        return m.bad_request(f"the request is larger than this server's limit of {limit} bytes "
                             f"({limit / 1e6:.0f} MB)", param="file", code=m.FILE_TOO_LARGE,
                             status=413)

    # ------------------------------------------------------------------ recognising

    async def _run(self, fn: Callable[..., Any], *args: Any, engine: str | None = None,
                   **kwargs: Any) -> Any:
        try:
            return await self.hub.executor.run(fn, *args, priority=Priority.BATCH, engine=engine,
                                               timeout=self.settings.queue_timeout_s, **kwargs)
        except ExecutorBusy:
            raise m.bad_request("the server is busy: the inference queue is full; retry later",
                                code=m.SERVER_BUSY, status=503) from None
        except ExecutorClosed:
            raise m.bad_request("the server is shutting down", code=m.SERVER_BUSY,
                                status=503) from None

    @staticmethod
    def _check_client(request: web.Request) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientGone()

    async def _engine(self, name: str) -> Any:
        try:
            return await self.hub.asr(name)
        except (ExecutorBusy, ExecutorClosed):
            raise m.bad_request("the server is busy; retry later", code=m.SERVER_BUSY,
                                status=503) from None
        except Exception as exc:  # noqa: BLE001 - a configured engine that cannot load
            log.error("openai_engine_unavailable", engine=name, error=str(exc))
            raise m.bad_request(f"the model's engine {name!r} is not available: {exc}",
                                code=m.SERVER_ERROR, status=503) from None

    async def _recognise(self, request: web.Request, req: m.AudioRequest, reader: PieceReader,
                         engine_name: str, references: dict[str, np.ndarray],
                         emit: Emit | None = None) -> Transcript:
        engine = await self._engine(engine_name)
        language = req.language or self.settings.language or None
        check = getattr(engine, "resolve_language", None)  # engines that can say at once
        if language is not None and check is not None:
            try:
                check(language)
            except (EngineError, ValueError) as exc:
                raise m.bad_request(str(exc), param="language") from None
        diarize = req.response_format == "diarized_json"
        segments: list[Segment] = []
        spans: list[tuple[float, float]] = []
        embeddings: dict[int, np.ndarray] = {}
        diarizing = diarize
        lanes = max(1, int(getattr(engine, "num_workers", 1) or 1))
        sent = ""
        detected: str | None = None
        while True:
            self._check_client(request)
            try:
                got = await self._run(reader.next_piece)
            except AudioError as exc:  # damage found further into the file
                raise m.bad_request(f"the file cannot be decoded: {exc}", param="file",
                                    code=m.INVALID_FILE) from None
            if got is None:
                break
            self.pieces += 1
            offset, audio = got
            regions = await self._utterances(audio)
            # Per-segment formats get one engine call per stretch of speech (segments that
            # follow speech turns, real times); json/text/stream get consecutive stretches
            # together, as the file protocol plans its pieces: fewer, cheaper calls, and no
            # pause over 1 s inside one (Whisper stops at one and drops what follows; joining
            # the speech with the pauses cut out dropped words too: WER 8.2 % against 2.4 %).
            stretches = ([Stretch.single(audio, a, b) for a, b in regions] if req.needs_segments
                         else [Stretch.single(audio, p.start, p.end) for p in plan_pieces(
                             regions, len(audio), max_len=int(MERGE_S * SAMPLE_RATE), pad=0)])
            index = 0
            while index < len(stretches):
                self._check_client(request)
                # An engine that decodes several calls at once (Whisper: a CTranslate2 worker
                # per core, one thread each) gets that many stretches side by side, as the
                # file protocol's pieces; the first, while the language is not known, alone.
                group = stretches[index:index + (lanes if language is not None else 1)]
                index += len(group)
                try:
                    parts: list[Transcript] = await asyncio.gather(*(self._run(
                        engine.transcribe, stretch.audio, engine=engine_name,
                        # subtitles are cut at word times (asrhub.formats)
                        language=language, task=req.task,
                        word_timestamps=req.words or wants_word_timestamps(req.response_format),
                        prompt=req.prompt, temperature=req.temperature) for stretch in group))
                except EngineError as exc:
                    raise m.bad_request(f"the model cannot do this: {exc}", param="model") from None
                except ValueError as exc:  # e.g. a language the engine does not know
                    raise m.bad_request(str(exc), param="language") from None
                for stretch, part in zip(group, parts, strict=True):
                    if part.text.strip() and part.language:
                        detected = detected or part.language
                        if language is None and req.task == "transcribe":
                            language = part.language  # detected once, kept for the rest
                    spoken = [s for s in part.segments if s.text.strip()]
                    new = [stretch.place(s, offset) for s in spoken]
                    if diarizing and new:
                        found = await self._embed(stretch.audio, [(s.start, s.end) for s in spoken])
                        if found is None:
                            diarizing = False  # no speaker engine: one speaker
                        else:
                            embeddings.update((len(segments) + i, e) for i, e in found.items())
                    segments += new
                    spans += [(s.start, s.end) for s in new]
                    if emit is not None and new:
                        text = join_texts([s.text for s in segments])
                        if text.startswith(sent) and len(text) > len(sent):
                            await emit(text[len(sent):])
                            sent = text
        duration = reader.samples / SAMPLE_RATE
        if diarize:
            self._label_speakers(segments, spans, embeddings, references if diarizing else {})
        return Transcript(text=join_texts([s.text for s in segments]),
                          language=detected or language, duration=duration, segments=segments)

    async def _utterances(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """Where ``audio`` (one piece) has speech, as stretches to recognise one by one: the
        hub's VAD regions, padded, joined across pauses under ``JOIN_GAP_S``. Silence is never
        sent to the recogniser; Whisper given one window with long pauses in it tends to stop
        at the first. Without a VAD: the whole piece."""
        try:
            vad = await self.hub.vad()
        except (ExecutorBusy, ExecutorClosed):
            raise m.bad_request("the server is busy; retry later", code=m.SERVER_BUSY,
                                status=503) from None
        except Exception as exc:  # noqa: BLE001 - no VAD: the piece is recognised whole
            log.info("openai_vad_unavailable", error=str(exc))
            vad = None
        if vad is None:
            return [(0, len(audio))]
        regions = await self._run(vad.speech_regions, audio, engine=getattr(vad, "name", None))
        pad, gap = int(PAD_S * SAMPLE_RATE), int(JOIN_GAP_S * SAMPLE_RATE)
        out: list[list[int]] = []
        for start, end in sorted(regions):
            start, end = max(0, start - pad), min(len(audio), end + pad)
            if out and start - out[-1][1] < gap:
                out[-1][1] = max(out[-1][1], end)
            elif end > start:
                out.append([start, end])
        return [(a, b) for a, b in out]

    async def _embed(self, audio: np.ndarray, spans: list[tuple[float, float]]) -> dict[int, np.ndarray] | None:
        try:
            return await embed_spans(self.hub, audio, spans, priority=Priority.BATCH,
                                     timeout=self.settings.queue_timeout_s)
        except (ExecutorBusy, ExecutorClosed):
            raise m.bad_request("the server is busy; retry later", code=m.SERVER_BUSY,
                                status=503) from None

    def _label_speakers(self, segments: list[Segment], spans: list[tuple[float, float]],
                        embeddings: dict[int, np.ndarray], references: dict[str, np.ndarray]) -> None:
        try:
            labels = labels_from_embeddings(spans, embeddings, threshold=self.settings.speaker_threshold,
                                            max_speakers=self.settings.max_speakers)
        except ImportError as exc:  # scipy: the "speaker" extra
            log.warning("diarization_unavailable", error=str(exc), fallback="one speaker")
            labels = [0] * len(segments)
        threshold = self._speaker_threshold()
        names = name_clusters(labels, embeddings, references, threshold) if references else {}
        letters: dict[int, str] = {}
        for seg, label in zip(segments, labels, strict=True):
            if label in names:
                seg.speaker = names[label]
            else:
                seg.speaker = letters.setdefault(label, m.speaker_label(len(letters)))

    def _speaker_threshold(self) -> float:
        engine = self.hub.loaded_engine("speaker")
        return float(getattr(engine, "default_threshold", 0.6))

    async def _known_speakers(self, req: m.AudioRequest) -> dict[str, np.ndarray]:
        """Reference embeddings by name: from the data-URL samples sent, else the voiceprint
        enrolled under that name (or id) in the hub's store."""
        if not req.known_speaker_names:
            return {}
        out: dict[str, np.ndarray] = {}
        try:
            speaker = await self.hub.speaker()
        except Exception as exc:  # noqa: BLE001
            raise m.bad_request(f"known speakers need a speaker engine: {exc}",
                                param="known_speaker_names", code=m.SERVER_ERROR, status=503) from None
        if speaker is None:
            raise m.bad_request("known speakers need a speaker engine ([engines] speaker)",
                                param="known_speaker_names", code=m.SERVER_ERROR, status=503)
        for index, name in enumerate(req.known_speaker_names):
            if index < len(req.known_speaker_references):
                data = m.data_url_bytes(req.known_speaker_references[index],
                                        param="known_speaker_references")
                try:
                    audio = await self._run(decode_bytes, data)
                except AudioError as exc:
                    raise m.bad_request(f"the reference for {name!r} is not audio: {exc}",
                                        param="known_speaker_references") from None
                try:
                    out[name] = np.asarray(await self._run(speaker.embed, audio,
                                                           engine=getattr(speaker, "name", None)),
                                           dtype=np.float32)
                except EngineError as exc:
                    raise m.bad_request(f"the reference for {name!r} cannot be used: {exc}",
                                        param="known_speaker_references") from None
                continue
            voiceprint = await self._voiceprint(name)
            if voiceprint is None:
                raise m.bad_request(f"no reference audio for {name!r} and no enrolled voiceprint "
                                    "by that name", param="known_speaker_names")
            out[name] = np.asarray(voiceprint.embedding, dtype=np.float32)
        return out

    async def _voiceprint(self, name: str) -> Any:
        try:
            store = await self.hub.voiceprints()
        except Exception:  # noqa: BLE001 - no store: no voiceprint by that name
            return None
        if store is None:
            return None
        found = await self._run(store.list)
        matches = [vp for vp in found if name in (vp.name, vp.speaker_id)]
        return matches[0] if matches else None

    # ------------------------------------------------------------------ SSE

    async def _stream(self, request: web.Request, req: m.AudioRequest, reader: PieceReader,
                      engine_name: str, references: dict[str, np.ndarray]) -> web.StreamResponse:
        await self._engine(engine_name)  # a model that cannot load is a plain HTTP error
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def emit(delta: str) -> None:
            await response.write(m.sse(m.delta_event(delta)))

        started = time.perf_counter()
        try:
            transcript = await self._recognise(request, req, reader, engine_name, references,
                                               emit=emit)
            self._account(transcript.duration, time.perf_counter() - started)
            if req.response_format == "diarized_json":
                for index, seg in enumerate(transcript.segments):
                    await response.write(m.sse(m.diarized_segment(index, seg)))
            await response.write(m.sse(m.done_event(transcript.text)))
        except ProtocolError as err:
            self.hub.count_error(self.ctx.name, err.code)
            await _write_quietly(response, m.sse(m.error_from(err)))
        except (ConnectionResetError, ClientGone):
            raise ClientGone() from None
        except Exception:  # noqa: BLE001 - the headers are sent: the error goes as an event
            log.exception("openai_stream_failed")
            self.hub.count_error(self.ctx.name, m.SERVER_ERROR)
            await _write_quietly(response, m.sse(m.error_body(
                "internal server error", status=500, code=m.SERVER_ERROR)))
        await _write_quietly(response, b"", eof=True)
        return response


async def _write_quietly(response: web.StreamResponse, data: bytes, *, eof: bool = False) -> None:
    try:
        if eof:
            await response.write_eof()
        else:
            await response.write(data)
    except ConnectionResetError:
        raise ClientGone() from None


@dataclass
class Stretch:
    """Audio for one engine call and where its samples come from in the piece: ``spans`` of
    (position in ``audio``, position in the piece, length), in samples."""

    audio: np.ndarray
    spans: list[tuple[int, int, int]]

    @classmethod
    def single(cls, piece: np.ndarray, start: int, end: int) -> Stretch:
        return cls(piece[start:end], [(0, start, end - start)])

    def original(self, seconds: float) -> float:
        """A time in this stretch's audio → seconds in the piece."""
        sample = seconds * SAMPLE_RATE
        for at, source, length in self.spans:
            if sample < at + length:
                return (source + max(0.0, sample - at)) / SAMPLE_RATE
        at, source, length = self.spans[-1]
        return (source + length) / SAMPLE_RATE

    def place(self, seg: Segment, piece_offset: int) -> Segment:
        """``seg`` (times in this stretch) with times in the file."""
        shift = piece_offset / SAMPLE_RATE
        return Segment(start=self.original(seg.start) + shift, end=self.original(seg.end) + shift,
                       text=seg.text.strip(),
                       words=[Word(self.original(w.start) + shift, self.original(w.end) + shift,
                                   w.word, w.probability) for w in seg.words],
                       speaker=seg.speaker, confidence=seg.confidence)


def openai_error_middleware() -> Any:
    """Every answer of this listener in OpenAI's error shape: aiohttp's own (404, 405, 413)
    and anything unexpected (500, logged; never a stack trace to the client)."""

    @web.middleware
    async def shape(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: m.NOT_FOUND, 405: "method_not_allowed", 413: m.FILE_TOO_LARGE}.get(
                exc.status, m.INVALID_VALUE)
            message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            if exc.status == 404:
                message = f"no such endpoint: {request.method} {request.path}"
            return web.json_response(m.error_body(message, status=exc.status, code=code),
                                     status=exc.status)
        except (asyncio.CancelledError, ClientGone):
            raise
        except Exception:
            log.exception("openai_handler_failed")
            return web.json_response(m.error_body("internal server error", status=500,
                                                  code=m.SERVER_ERROR), status=500)

    return shape

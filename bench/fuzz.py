#!/usr/bin/env python3
"""Fuzz every protocol of a real ``asrhub serve`` at volume, while a healthy client transcribes.

One ``asrhub serve`` child (every protocol, Whisper ``--model``, loopback, its own temporary
state_dir; bench/_server.py). For each protocol a worker sends ``--messages`` generated
messages (default 100,000) over one connection at a time, reading every reply as it comes:

* a third are drawn from the Hypothesis strategies of tests/test_fuzz.py (``messages`` for the
  WebSocket protocols, ``wyoming_messages`` for Wyoming; a seeded pool of ``--pool`` examples
  per protocol, imported, not copied), a third are those examples mutated (cut, spliced,
  bytes flipped, numbers replaced by NaN/1e400/4301 digits), a third come from this file's own
  seeded generators: malformed JSON, wrong types, unknown commands, huge numbers/NaN, deep
  nesting, lone surrogates (``\\ud800`` escapes), oversized frames, random binary and
  valid-looking command sequences of the protocol (start, audio, stop, ...).
* The OpenAI API is fuzzed twice: its realtime WebSocket and its HTTP endpoints (each HTTP
  request is one message: multipart forms with bad fields and non-audio files, raw bodies,
  JSON, odd paths).
* When the server closes a connection the worker reconnects (counted); otherwise it moves to
  a new connection after a random 1-400 messages, so opening and closing is fuzzed too.

Meanwhile a healthy client streams a real recording (``CLIP``, human reference) through
streaming_stt at real-time pace, round after round; each round's WER is recorded. The server's
RSS and open fds are sampled every ``--sample-s``; at the end its log is scanned for
error-level lines and tracebacks (must be zero) and each worker's replies are counted by
error code (close codes too: 1011 would be an internal error).

    .venv/bin/python bench/fuzz.py                         # 100k per protocol (the record)
    .venv/bin/python bench/fuzz.py --messages 2000 --out /tmp/fuzz.md   # a quick look

Everything is bounded: ``--messages`` per protocol and ``--time-limit`` seconds in all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from asrhub.audio import decode_file, float_to_pcm16  # noqa: E402
from asrhub.testing import manifest, testdata_dir, wer  # noqa: E402
from bench._server import AsrhubServer, load_avg, proc_fds, proc_rss_mb, scan_log  # noqa: E402

CLIP = "en/pocketsphinx_librivox_ss01_0870.wav"  # 7.1 s, human reference (NOTES.tsv)
WS_PATHS = {
    "ptt": "/ws/asr",
    "streaming_stt": "/",
    "vad_stream": "/",
    "file_transcription": "/",
    "session_broadcast": "/ws/asr/{sid}?mode=sender",
    "openai_realtime": "/v1/realtime?intent=transcription",
    "funasr_runtime": "/",
}
TARGETS = ["ptt", "streaming_stt", "vad_stream", "file_transcription", "session_broadcast",
           "openai_http", "openai_realtime", "funasr_runtime", "wyoming"]
PORT_OF = {"openai_http": "openai_api", "openai_realtime": "openai_api"}
# The strategy of tests/test_fuzz.py each target draws from (its vocabulary).
STRATEGY_OF = {"openai_http": "openai_api", "openai_realtime": "openai_api"}
# Each listener's max_message_bytes (its defaults): an oversized message is one byte over it,
# and every other one also over the WebSocket frame limit (4 x max_message_bytes).
MESSAGE_LIMIT = {"ptt": 2 << 20, "file_transcription": 10 << 20, "openai_realtime": 4 << 20,
                 "openai_http": 25 << 20, "wyoming": 1 << 20}
DEFAULT_LIMIT = 1 << 20

# ----------------------------------------------------------------------------- generation


def hypothesis_pool(target: str, size: int, seed: int) -> list[Any]:
    """``size`` examples of the test suite's strategy for ``target``, reproducibly."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import test_fuzz  # tests/test_fuzz.py: the strategies CI runs

    name = STRATEGY_OF.get(target, target)
    strategy = test_fuzz.wyoming_messages() if name == "wyoming" else test_fuzz.messages(name)
    pool: list[Any] = []

    @hypothesis_seed(seed)
    @settings(max_examples=size, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        pool.append(example)

    collect()
    return pool


SPICE = ["NaN", "Infinity", "-Infinity", "1e400", "-0", "9" * 4301, str(-(2 ** 64)), "null",
         '"\\ud800"', '"\\udfff x"', "[]", "{}", '""', "true", '"../x"', '"x\\u0000y"']


def json_text(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True, ensure_ascii=True)


def pcm_noise(rng: random.Random, seconds: float, amplitude: float = 0.01) -> bytes:
    n = int(16000 * seconds)
    return (np.random.default_rng(rng.getrandbits(32)).standard_normal(n) * amplitude * 32767
            ).astype("<i2").tobytes()


class Generator:
    """Seeded messages for one target: pool examples, their mutations, and our own kinds."""

    def __init__(self, target: str, pool: list[Any], seed: int, oversized_every: int) -> None:
        self.target = target
        self.pool = pool
        self.rng = random.Random(seed)
        self.oversized_every = oversized_every
        self.count = 0
        self.oversized_count = 0
        self.queue: collections.deque[Any] = collections.deque()  # a sequence in progress
        self.kinds: collections.Counter[str] = collections.Counter()

    # -- the mix
    def next(self) -> Any:
        self.count += 1
        if self.queue:
            self.kinds["sequence"] += 1
            return self.queue.popleft()
        if self.oversized_every and self.count % self.oversized_every == 0:
            self.kinds["oversized"] += 1
            return self.oversized()
        roll = self.rng.random()
        if self.target == "openai_http":
            return self.next_http(roll)
        if roll < 0.34:
            self.kinds["hypothesis"] += 1
            return self.rng.choice(self.pool)
        if roll < 0.67:
            self.kinds["mutated"] += 1
            return self.mutate(self.rng.choice(self.pool))
        return self.own()

    def next_http(self, roll: float) -> dict[str, Any]:
        """An HTTP request: random forms, paths and bodies; a third of them JSON bodies from the
        realtime strategy's pool (and its mutations); now and then a valid short request."""
        if roll < 0.17:
            self.kinds["hypothesis"] += 1
            return self.json_body(self.rng.choice(self.pool))
        if roll < 0.34:
            self.kinds["mutated"] += 1
            return self.json_body(self.mutate(self.rng.choice(self.pool)))
        if roll < 0.342:
            self.kinds["valid"] += 1
            return self.http_request(valid=True)
        self.kinds["http_random"] += 1
        return self.http_request()

    def json_body(self, body: Any) -> dict[str, Any]:
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        path = self.rng.choice(["/v1/audio/transcriptions", "/v1/audio/translations"])
        return {"kind": "raw", "path": path, "body": body,
                "content_type": self.rng.choice(["application/json", "multipart/form-data; boundary=b", ""])}

    def mutate(self, item: Any) -> Any:
        rng = self.rng
        if isinstance(item, bytes):
            data = bytearray(item or b"\x00")
            op = rng.randrange(4)
            if op == 0:
                for _ in range(rng.randint(1, 8)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1:
                data = data[:rng.randrange(len(data) + 1)]
            elif op == 2:
                data += rng.randbytes(rng.randint(1, 256))
            else:
                cut = rng.randrange(len(data) + 1)
                data = data[:cut] + data[:cut]
            return bytes(data)
        text = str(item)
        op = rng.randrange(5)
        if op == 0 and text:
            return text[:rng.randrange(len(text))]
        if op == 1:
            at = rng.randrange(len(text) + 1)
            return text[:at] + rng.choice(['"', "{", "}", "[", ",", ":", "\\", "\\u", "\x00"]) + text[at:]
        if op == 2:  # replace a value after a colon with a spicy one
            at = text.find(":", rng.randrange(len(text) + 1))
            if at >= 0:
                end = min([i for i in (text.find(",", at), text.find("}", at)) if i >= 0] or [len(text)])
                return text[:at + 1] + " " + rng.choice(SPICE) + text[end:]
            return text + rng.choice(SPICE)
        if op == 3:
            return text + text
        return text.replace('"', "'", 1)

    # -- our own kinds
    def own(self) -> Any:
        rng = self.rng
        kind = rng.choice(["malformed", "wrong_types", "unknown", "numbers", "deep", "surrogate",
                           "binary", "valid"] * 3 + ["sequence"])  # a sequence waits for the recogniser
        self.kinds[kind] += 1
        if kind == "binary":
            return rng.randbytes(rng.choice([0, 1, 3, 320, 640, 3200, 8192]))
        if kind == "deep":
            n = rng.choice([33, 100, 1000, 20000, 100000])
            opener = rng.choice(["[", '{"a":', '{"type":', '{"command":'])
            return opener * n + "1" + ("]" if opener == "[" else "}") * n
        if kind == "sequence":
            self.queue.extend(self.sequence())
            self.kinds["sequence"] -= 1
            return self.next()
        template = self.rng.choice(self.templates())
        if kind == "valid":
            return self.render(template)
        if kind == "malformed":
            text = self.render(template)
            if isinstance(text, bytes):
                text = text.decode("latin-1")
            return rng.choice([text[:-rng.randint(1, max(1, len(text) // 2))], text + ",", "{" + text,
                               text.replace(":", "", 1), "{'type': 'x'}", "{\"a\" 1}", "nul", "tru"])
        obj = dict(template) if isinstance(template, dict) else {"type": "x"}
        key = rng.choice(list(obj) or ["type"])
        if kind == "wrong_types":
            obj[key] = rng.choice([None, 1, -1, 1.5, True, [], {}, [1, "a"], {"x": {"y": []}}, "", "0"])
            return self.render(obj)
        if kind == "unknown":
            for k in ("type", "command", "mode"):
                if k in obj:
                    obj[k] = rng.choice(["", "STOP", "start ", "drop_tables", "ü", "__proto__", "x" * 5000])
                    break
            else:
                obj["unknown_" + str(rng.randrange(100))] = 1
            return self.render(obj)
        # numbers / surrogate: a value replaced by JSON text json.dumps cannot write
        spice = rng.choice(SPICE)
        if kind == "surrogate":
            spice = rng.choice(['"\\ud800"', '"a\\udc00b"', '"\\ud83d"', '"\\udfff\\ud800"'])
        obj[key] = "__SPICE__"
        rendered = self.render(obj)
        if isinstance(rendered, bytes):  # a Wyoming frame: the header line is JSON text
            return rendered.replace(b'"__SPICE__"', spice.encode(), 1)
        if isinstance(rendered, dict):  # an HTTP request: spice a form field
            rendered = dict(rendered)
            rendered["fields"] = {**rendered.get("fields", {}), "model": spice}
            return rendered
        return rendered.replace('"__SPICE__"', spice, 1)

    def oversized(self) -> Any:
        limit = MESSAGE_LIMIT.get(self.target, DEFAULT_LIMIT)
        if self.target == "wyoming":
            return (json_text({"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                               "payload_length": limit + 1}).encode() + b"\n" + b"\0" * (limit + 1))
        if self.target == "openai_http":  # max_body_bytes
            return {"kind": "raw", "path": "/v1/audio/transcriptions", "body": b"\0" * (limit + 1),
                    "content_type": "application/octet-stream"}
        size = limit + 1 if self.oversized_count % 2 or self.target == "file_transcription" else 4 * limit + 1
        self.oversized_count += 1
        if self.rng.random() < 0.5:
            return b"\0" * size
        return '{"type": "' + "x" * size + '"}'

    def render(self, obj: Any) -> Any:
        if self.target == "wyoming":
            return wyoming_frame(obj) if isinstance(obj, dict) else obj
        if self.target == "openai_http":
            return obj
        return obj if isinstance(obj, (str, bytes)) else json_text(obj)

    def templates(self) -> list[Any]:
        """Valid-looking messages of the protocol (fresh ids and audio every 50 calls)."""
        self._templates_used = getattr(self, "_templates_used", 0) + 1
        if self._templates_used % 50 == 1:
            self._templates = self.make_templates()
        return self._templates

    def make_templates(self) -> list[Any]:
        rng = self.rng
        b64 = base64.b64encode(pcm_noise(rng, 0.02)).decode()
        t = self.target
        if t == "ptt":
            return [{"type": "control", "command": "start"}, {"type": "control", "command": "stop"},
                    {"type": "control", "command": "reset", "timestamp": 1},
                    {"type": "audio", "data": b64, "timestamp": 2}, {"type": "ping"}]
        if t == "streaming_stt":
            return [{"command": "start", "language": "en"}, {"command": "stop"}, {"command": "ping"},
                    {"command": "start", "format": "pcm_s16le"}]
        if t == "vad_stream":
            return [{"command": "ping"}, {"command": "batch_start", "sample_rate": 16000},
                    {"command": "batch_end"}, {"command": "speaker_list"},
                    {"command": "speaker_register_start", "user_id": f"fz{rng.randrange(50)}"},
                    {"command": "speaker_register_end"}, {"command": "speaker_verify_enable", "required": True}]
        if t == "file_transcription":
            return [{"type": "upload_request", "data": {"file_name": "a.wav", "file_size": rng.randint(1, 5000),
                                                        "file_hash": uuid.uuid4().hex, "output_format": "json"}},
                    {"type": "upload_data", "data": {"task_id": uuid.uuid4().hex, "file_data": b64}},
                    {"type": "task_status", "data": {"task_id": uuid.uuid4().hex}},
                    {"type": "upload_request", "data": {"file_name": "b.wav", "file_size": 100, "upload_mode": "chunked",
                                                        "chunk_size": 50, "total_chunks": 2,
                                                        "file_hash": uuid.uuid4().hex}}]
        if t == "session_broadcast":
            return [{"type": "close"}, {"language": "en"}, "close"]
        if t == "openai_realtime":
            return [{"type": "transcription_session.update", "session": {"input_audio_format": "pcm16"}},
                    {"type": "input_audio_buffer.append", "audio": b64},
                    {"type": "input_audio_buffer.commit"}, {"type": "input_audio_buffer.clear"},
                    {"type": "session.update", "session": {"type": "transcription"}}]
        if t == "funasr_runtime":
            return [{"mode": rng.choice(["online", "offline", "2pass"]), "wav_name": "fz", "is_speaking": True,
                     "chunk_size": [5, 10, 5], "wav_format": "pcm", "audio_fs": 16000},
                    {"is_speaking": False}, {"hotwords": "{\"a\": 1}", "itn": True}]
        if t == "wyoming":
            return [{"type": "describe"}, {"type": "ping", "data": {}},
                    {"type": "transcribe", "data": {"language": "en"}},
                    {"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}},
                    {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                     "payload": pcm_noise(rng, 0.05)},
                    {"type": "audio-stop"}, {"type": "select-program", "data": {"name": "x"}}]
        if t == "openai_http":
            return [self.http_request()]
        raise ValueError(t)

    def sequence(self) -> list[Any]:
        """A valid-looking command sequence (a little quiet audio, so it stays cheap)."""
        rng = self.rng
        t = self.target
        pcm = pcm_noise(rng, rng.choice([0.1, 0.3]), 0.003)
        if t == "ptt":
            return [json_text({"type": "control", "command": "start"}),
                    json_text({"type": "audio", "data": base64.b64encode(pcm).decode()}),
                    json_text({"type": "control", "command": "stop"})]
        if t == "streaming_stt":
            return [json_text({"command": "start"}), pcm, json_text({"command": "stop"})]
        if t == "vad_stream":
            return [json_text({"command": "batch_start", "sample_rate": 16000}), pcm,
                    json_text({"command": "batch_end"})]
        if t == "file_transcription":
            return [json_text(m) for m in self.templates()[:3]]
        if t == "session_broadcast":
            f32 = (np.frombuffer(pcm, "<i2").astype("<f4") / 32768).tobytes()
            return [f32, f32]
        if t == "openai_realtime":
            return [json_text({"type": "transcription_session.update", "session": {"turn_detection": None}}),
                    json_text({"type": "input_audio_buffer.append", "audio": base64.b64encode(
                        pcm_noise(rng, 0.2, 0.003)).decode()}),
                    json_text({"type": "input_audio_buffer.commit"})]
        if t == "funasr_runtime":
            return [json_text({"mode": "offline", "wav_name": "fz", "is_speaking": True, "wav_format": "pcm",
                               "audio_fs": 16000}), pcm, json_text({"is_speaking": False})]
        if t == "wyoming":
            return [wyoming_frame(m) for m in (
                {"type": "transcribe", "data": {"language": "en"}},
                {"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}},
                {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload": pcm},
                {"type": "audio-stop"})]
        if t == "openai_http":
            return [self.http_request(valid=True)]
        raise ValueError(t)

    def http_request(self, valid: bool = False) -> dict[str, Any]:
        rng = self.rng
        if valid:
            return {"kind": "form", "path": "/v1/audio/transcriptions",
                    "fields": {"model": "whisper-1", "response_format": rng.choice(["json", "text", "verbose_json"])},
                    "file": wav_bytes(pcm_noise(rng, 0.3, 0.003))}
        kind = rng.choice(["form", "form", "form", "raw", "json", "get"])
        path = rng.choice(["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models",
                           "/v1/models/" + rng.choice(["whisper-1", "x", "%00", "..%2f..", "é" * 3]),
                           "/v1/audio/transcriptions?x=1e400", "/v1/../health"])
        if kind == "get":
            return {"kind": "get", "path": path}
        if kind == "json":
            return {"kind": "raw", "path": path, "content_type": "application/json",
                    "body": rng.choice(SPICE + ['{"file": 1}', '{"model": "whisper-1"}']).encode()}
        if kind == "raw":
            return {"kind": "raw", "path": path, "body": rng.randbytes(rng.choice([0, 10, 1000])),
                    "content_type": rng.choice(["audio/wav", "multipart/form-data", "multipart/form-data; boundary=x",
                                                "text/plain", ""])}
        fields = {}
        for key in rng.sample(["model", "language", "prompt", "response_format", "temperature",
                               "timestamp_granularities[]", "stream", "chunking_strategy", "include[]"],
                              rng.randint(0, 5)):
            fields[key] = rng.choice(["whisper-1", "", "NaN", "1e400", "-1", "9" * 500, "json", "srt", "vtt",
                                      "verbose_json", "true", "word", "auto", "xx", "en", "\x00", "{}", "ü" * 50])
        file = rng.choice([None, b"", rng.randbytes(rng.choice([4, 44, 1000])), b"RIFF" + rng.randbytes(100),
                           wav_bytes(b"")[:44], b"ID3" + rng.randbytes(50), b"OggS" + rng.randbytes(60)])
        return {"kind": "form", "path": path, "fields": fields, "file": file}


def wav_bytes(pcm: bytes) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return buf.getvalue()


def wyoming_frame(obj: dict[str, Any]) -> bytes:
    """The event framed as the wyoming package frames it; a payload that is not bytes (a
    generator put another JSON value there) becomes a payload_length that lies."""
    payload = obj.get("payload", b"")
    header = {"type": obj.get("type"), "data": obj.get("data", {})}
    if not isinstance(payload, bytes):
        header["payload_length"], payload = payload, b""
    elif payload:
        header["payload_length"] = len(payload)
    return json_text(header).encode() + b"\n" + payload


# ----------------------------------------------------------------------------- workers


@dataclass
class Stats:
    sent: int = 0
    connections: int = 0
    reconnects: int = 0  # the server closed the connection (we then reconnect)
    refused: int = 0  # a connect that failed
    replies: collections.Counter[str] = field(default_factory=collections.Counter)
    close_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0


def error_code(body: Any) -> str:
    """The protocol's error code in a reply, or "ok" for a reply that is not an error."""
    if not isinstance(body, dict):
        return "ok"
    kind = body.get("type")
    if kind == "error" or "error" in body:
        for place in (body, body.get("error"), body.get("data")):
            if isinstance(place, dict):
                for key in ("code", "error"):
                    if isinstance(place.get(key), (str, int)) and not isinstance(place.get(key), bool):
                        return str(place[key])
        if isinstance(body.get("error"), str):
            return "error: " + body["error"][:40]
        return "error (no code)"
    return "ok"


async def quiet(stats: Stats, reader: asyncio.Task, gap: float = 0.2, limit: float = 3.0) -> None:
    """Wait until no reply came for ``gap`` seconds (at most ``limit``), or the reader ended."""
    end = time.monotonic() + limit
    seen = -1
    while time.monotonic() < end and not reader.done():
        total = sum(stats.replies.values())
        if total == seen:
            return
        seen = total
        await asyncio.wait([reader], timeout=gap)


async def ws_worker(target: str, port: int, gen: Generator, count: int, stats: Stats,
                    deadline: float) -> None:
    rng = random.Random(gen.rng.random())
    protocols = ("binary",) if target == "funasr_runtime" else ()
    start = time.monotonic()
    timeout = aiohttp.ClientWSTimeout(ws_close=3)  # type: ignore[call-arg]
    async with aiohttp.ClientSession() as http:
        pending = None
        while stats.sent < count and time.monotonic() < deadline:
            url = f"http://127.0.0.1:{port}" + WS_PATHS[target].format(sid=uuid.uuid4().hex[:12])
            try:
                ws = await http.ws_connect(url, protocols=protocols, max_msg_size=0, timeout=timeout,
                                           heartbeat=None)
            except (TimeoutError, aiohttp.ClientError, OSError):
                stats.refused += 1
                await asyncio.sleep(0.2)
                continue
            stats.connections += 1

            async def read(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        try:
                            stats.replies[error_code(json.loads(msg.data))] += 1
                        except ValueError:
                            stats.replies["not json"] += 1
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        stats.replies["binary"] += 1

            reader = asyncio.create_task(read())
            budget = rng.randint(1, 400)
            closed_by_server = False
            while budget and stats.sent < count and time.monotonic() < deadline:
                message = pending if pending is not None else gen.next()
                if ws.closed or reader.done():
                    pending = message
                    closed_by_server = True
                    break
                try:
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    elif message.isascii():
                        await ws.send_str(message)
                    else:  # a lone surrogate cannot be UTF-8: sent as the bytes Python would write
                        await ws.send_bytes(message.encode("utf-8", "surrogatepass"))
                except (ConnectionError, aiohttp.ClientError, RuntimeError):
                    # The server closed while this one was on the wire (an oversized frame is
                    # cut off as it arrives): it was sent, and is not sent again.
                    pending = None
                    stats.sent += 1
                    closed_by_server = True
                    break
                pending = None
                stats.sent += 1
                budget -= 1
                if stats.sent % 50 == 0:
                    await asyncio.sleep(0)
            if not closed_by_server:  # read the last replies: until 0.2 s pass without one
                await quiet(stats, reader)
                closed_by_server = ws.closed or reader.done()
            if closed_by_server:
                stats.reconnects += 1
            else:
                await ws.close()
            try:
                await asyncio.wait_for(reader, 10)
            except TimeoutError:
                reader.cancel()
            stats.close_codes[str(ws.close_code)] += 1
    stats.seconds = time.monotonic() - start


async def wyoming_worker(port: int, gen: Generator, count: int, stats: Stats, deadline: float) -> None:
    from wyoming.event import async_read_event

    rng = random.Random(gen.rng.random())
    start = time.monotonic()
    pending = None
    while stats.sent < count and time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.refused += 1
            await asyncio.sleep(0.2)
            continue
        stats.connections += 1

        async def read(reader: asyncio.StreamReader = reader) -> None:
            try:
                while (event := await async_read_event(reader)) is not None:
                    stats.replies[str(event.data.get("code")) if event.type == "error" else "ok"] += 1
            except (ConnectionError, ValueError):
                pass

        read_task = asyncio.create_task(read())
        budget = rng.randint(1, 400)
        closed_by_server = False
        while budget and stats.sent < count and time.monotonic() < deadline:
            message = pending if pending is not None else gen.next()
            if isinstance(message, str):  # a malformed line of our own generators
                message = message.encode("utf-8", "surrogatepass") + b"\n"
            if read_task.done() or writer.is_closing():
                pending, closed_by_server = message, True
                break
            try:
                writer.write(message)
                await writer.drain()
            except (ConnectionError, RuntimeError):
                pending, closed_by_server = None, True
                stats.sent += 1
                break
            pending = None
            stats.sent += 1
            budget -= 1
        if not closed_by_server:
            await quiet(stats, read_task)
            closed_by_server = read_task.done()
        if closed_by_server:
            stats.reconnects += 1
            stats.close_codes["server closed"] += 1
        else:
            stats.close_codes["client closed"] += 1
        writer.close()
        try:
            await asyncio.wait_for(read_task, 10)
        except TimeoutError:
            read_task.cancel()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    stats.seconds = time.monotonic() - start


async def http_worker(port: int, gen: Generator, count: int, stats: Stats, deadline: float,
                      lanes: int = 8) -> None:
    """``lanes`` concurrent request loops (HTTP/1.1 keeps one request per connection in flight);
    each moves to a new connection (a new client session) every 1-400 requests."""
    start = time.monotonic()
    base = f"http://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=120)
    claimed = 0

    async def lane(seed: int) -> None:
        nonlocal claimed
        rng = random.Random(seed)
        while claimed < count and time.monotonic() < deadline:
            async with aiohttp.ClientSession(timeout=timeout,
                                             connector=aiohttp.TCPConnector(limit=1)) as http:
                stats.connections += 1
                for _ in range(rng.randint(1, 400)):
                    if claimed >= count or time.monotonic() >= deadline:
                        break
                    claimed += 1
                    if not await one_request(http, gen.next()):
                        break

    async def one_request(http: aiohttp.ClientSession, spec: dict[str, Any]) -> bool:
        try:
            if spec["kind"] == "get":
                request = http.get(base + spec["path"])
            elif spec["kind"] == "raw":
                headers = {"Content-Type": spec["content_type"]} if spec["content_type"] else {}
                request = http.post(base + spec["path"], data=spec["body"], headers=headers)
            else:
                form = aiohttp.FormData()
                for key, value in spec["fields"].items():
                    form.add_field(key, value)
                if spec["file"] is not None:
                    form.add_field("file", spec["file"], filename="a.wav", content_type="audio/wav")
                request = http.post(base + spec["path"], data=form)
            async with request as resp:
                body = await resp.read()
            stats.sent += 1
            code = "ok"
            try:
                code = error_code(json.loads(body))
            except ValueError:
                pass
            stats.replies[f"{resp.status} {code}" if code != "ok" else str(resp.status)] += 1
            return True
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            stats.sent += 1
            stats.reconnects += 1
            stats.replies[f"connection closed ({type(exc).__name__})"] += 1
            return False

    await asyncio.gather(*(lane(gen.rng.randrange(1 << 30)) for _ in range(lanes)))
    stats.seconds = time.monotonic() - start


# ----------------------------------------------------------------------------- healthy client


async def streaming_round(port: int, pcm: np.ndarray, phases: dict[str, float] | None = None) -> str:
    """streaming_stt at real-time pace (bench/memory_and_lag.py's client), bounded; the time
    each phase took goes into ``phases`` (connect, start, send, final)."""
    clock = time.monotonic()
    phases = {} if phases is None else phases

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases[name] = round(now - clock, 2)
        clock = now

    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        await ws.receive_json(timeout=30)
        lap("connect")
        await ws.send_json({"command": "start", "language": "en"})
        lap("start")
        for i in range(0, len(pcm), 1600):
            await ws.send_bytes(float_to_pcm16(pcm[i:i + 1600]))
            await asyncio.sleep(0.1)
        await ws.send_bytes(float_to_pcm16(np.zeros(8000, np.float32)))
        await ws.send_json({"command": "stop"})
        lap("send")
        final: list[str] = []
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("type") == "final":
                final.append(data["text"])
            if data.get("type") in ("session_ended", "error"):
                break
        lap("final")
        return " ".join(final)


def healthy_process(port: int, out: str, stop_file: str) -> None:
    """The healthy client, in its own process (the fuzzers keep this one's loop busy): rounds
    until ``stop_file`` exists, one JSON line per round in ``out``."""
    pcm = decode_file(testdata_dir() / CLIP)
    reference = manifest()[CLIP]["transcript"]

    async def rounds() -> None:
        while not os.path.exists(stop_file):
            started = time.monotonic()
            phases: dict[str, float] = {}
            try:
                text = await asyncio.wait_for(streaming_round(port, pcm, phases), 120)
                row: dict[str, Any] = {"wer": wer(reference, text), "text": text}
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as exc:
                row = {"wer": float("nan"), "text": f"FAILED: {exc!r}"}
            row["seconds"] = time.monotonic() - started
            row["phases"] = phases
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")

    asyncio.run(rounds())


async def sampler(pid: int, every: float, done: asyncio.Event, samples: list[tuple]) -> None:
    start = time.monotonic()
    while not done.is_set():
        samples.append((time.monotonic() - start, proc_rss_mb(pid), proc_fds(pid)))
        try:
            await asyncio.wait_for(done.wait(), every)
        except TimeoutError:
            pass
    samples.append((time.monotonic() - start, proc_rss_mb(pid), proc_fds(pid)))


# ----------------------------------------------------------------------------- main


async def fuzz(server: AsrhubServer, args: argparse.Namespace, pools: dict[str, list[Any]],
               pcm: np.ndarray, reference: str) -> dict[str, Any]:
    done = asyncio.Event()
    samples: list[tuple] = []
    rounds: list[dict[str, Any]] = []
    # A warm-up round first (the model's first decode), then the start sample.
    await asyncio.wait_for(streaming_round(server.ports["streaming_stt"], pcm), 120)
    sample_task = asyncio.create_task(sampler(server.pid, args.sample_s, done, samples))
    import multiprocessing

    rounds_file, stop_file = server.state / "healthy.jsonl", server.state / "healthy.stop"
    healthy_proc = multiprocessing.get_context("spawn").Process(
        target=healthy_process, args=(server.ports["streaming_stt"], str(rounds_file), str(stop_file)))
    healthy_proc.start()
    deadline = time.monotonic() + args.time_limit
    stats = {t: Stats() for t in args.targets}
    generators = {t: Generator(t, pools[t], args.seed + i, args.oversized_every)
                  for i, t in enumerate(args.targets)}
    jobs = []
    for target in args.targets:
        port = server.ports[PORT_OF.get(target, target)]
        if target == "wyoming":
            jobs.append(wyoming_worker(port, generators[target], args.messages, stats[target], deadline))
        elif target == "openai_http":
            jobs.append(http_worker(port, generators[target], args.messages, stats[target], deadline))
        else:
            jobs.append(ws_worker(target, port, generators[target], args.messages, stats[target], deadline))
    started = time.monotonic()
    results = await asyncio.gather(*jobs, return_exceptions=True)
    elapsed = time.monotonic() - started
    done.set()
    await sample_task
    stop_file.touch()
    await asyncio.get_running_loop().run_in_executor(None, healthy_proc.join, 150)
    if healthy_proc.is_alive():
        healthy_proc.terminate()
    if rounds_file.exists():
        rounds += [json.loads(line) for line in rounds_file.read_text().splitlines()]
    crashes = {t: repr(r) for t, r in zip(args.targets, results, strict=True) if isinstance(r, BaseException)}
    return {"stats": stats, "samples": samples, "rounds": rounds, "elapsed": elapsed, "crashes": crashes,
            "kinds": {t: dict(g.kinds) for t, g in generators.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--messages", type=int, default=100_000, help="messages per protocol")
    parser.add_argument("--pool", type=int, default=1500, help="Hypothesis examples per protocol")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds for all the fuzzing")
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--oversized-every", type=int, default=5000,
                        help="one oversized frame every N messages (0 = none)")
    parser.add_argument("--keep", action="store_true", help="keep the server's state dir and log")
    parser.add_argument("--targets", nargs="*", default=TARGETS, choices=TARGETS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.md"))
    args = parser.parse_args()
    command = " ".join(["bench/fuzz.py", *sys.argv[1:]])
    load_start = load_avg()
    print(f"generating Hypothesis pools ({args.pool} per protocol) ...", flush=True)
    pools = {t: hypothesis_pool(t, args.pool, args.seed + i) for i, t in enumerate(args.targets)}
    if "openai_http" in pools:  # HTTP: JSON bodies from the realtime strategy, plus its own
        pools["openai_http"] = hypothesis_pool("openai_realtime", args.pool, args.seed - 1)
    pcm = decode_file(testdata_dir() / CLIP)
    reference = manifest()[CLIP]["transcript"]
    # One fuzz connection per protocol plus the healthy one: the default limits hold.
    server = AsrhubServer(model=args.model)
    server.start()
    print(f"server pid {server.pid}, ports {server.ports}", flush=True)
    try:
        result = asyncio.run(fuzz(server, args, pools, pcm, reference))
        alive = server.alive()
        rss_end, fds_end = (proc_rss_mb(server.pid), proc_fds(server.pid)) if alive else (float("nan"), -1)
    finally:
        exit_code = server.stop()
    scan = scan_log(server.log_path)
    report = render(args, command, load_start, load_avg(), result, scan, alive, exit_code, rss_end, fds_end)
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    if scan.error_count == 0 and scan.tracebacks == 0 and not args.keep:
        server.cleanup()
    else:
        print(f"server log kept: {server.log_path}")


def render(args, command, load_start, load_end, result, scan, alive, exit_code, rss_end, fds_end) -> str:
    stats: dict[str, Stats] = result["stats"]
    rows = ["| protocol | messages sent | msg/s | connections | reconnects (server closed) | "
            "replies by error code | close codes |", "|---|---|---|---|---|---|---|"]
    for target, s in stats.items():
        replies = ", ".join(f"{k}: {v}" for k, v in s.replies.most_common(8))
        more = len(s.replies) - 8
        if more > 0:
            replies += f", … {more} more codes"
        codes = ", ".join(f"{k}: {v}" for k, v in s.close_codes.most_common(6))
        rate = s.sent / s.seconds if s.seconds else 0
        rows.append(f"| {target} | {s.sent} | {rate:.0f} | {s.connections} | {s.reconnects} | {replies} | {codes} |")
    samples = result["samples"]
    rounds = result["rounds"]
    wers = [r["wer"] for r in rounds]
    first, last = samples[0], samples[-1]
    sample_rows = ["| t (s) | RSS (MB) | open fds |", "|---|---|---|"]
    step = max(1, len(samples) // 12)
    for t, rss, fds in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        sample_rows.append(f"| {t:.0f} | {rss:.0f} | {fds} |")
    rss_peak = max(s[1] for s in samples)
    internal = {t: {k: v for k, v in s.replies.items() if "internal" in k.lower() or "server_error" in k}
                for t, s in stats.items()}
    internal = {t: v for t, v in internal.items() if v}
    http_500 = sum(v for s in stats.values() for k, v in s.replies.items() if k.startswith("500"))
    closes_1011 = sum(s.close_codes.get("1011", 0) for s in stats.values())
    short = [t for t, s in stats.items() if s.sent < args.messages]
    ok_rounds = [w for w in wers if w == w]
    held, failed = [], []
    (held if alive else failed).append(f"the server {'stayed up' if alive else 'DIED'} "
                                       f"(exit code after SIGTERM: {exit_code})")
    (held if scan.error_count == 0 else failed).append(f"{scan.error_count} error-level log lines")
    (held if scan.tracebacks == 0 else failed).append(f"{scan.tracebacks} tracebacks in the log")
    (held if not internal and not http_500 and not closes_1011 else failed).append(
        f"internal-error replies {internal or 0}, HTTP 500s {http_500}, 1011 closes {closes_1011}")
    (held if not short else failed).append(
        f"{args.messages} messages per protocol sent" + (f" (short: {', '.join(short)})" if short else ""))
    (held if not result["crashes"] else failed).append(f"bench workers crashed: {result['crashes'] or 'none'}")
    # Flat: the second half of the run adds under 5 % (the first minutes include the model's
    # first decodes and the allocator's arenas filling).
    mid = samples[len(samples) // 2]
    (held if last[1] - mid[1] < 0.05 * mid[1] else failed).append(
        f"RSS {first[1]:.0f} MB at start → {mid[1]:.0f} MB at half time → {last[1]:.0f} MB at end "
        f"(peak {rss_peak:.0f} MB; flat means the second half adds < 5 %)")
    (held if last[2] <= first[2] + 5 else failed).append(f"open fds {first[2]} at start → {last[2]} at end")
    healthy_ok = bool(rounds) and len(ok_rounds) == len(wers) and max(ok_rounds) <= 0.2
    (held if healthy_ok else failed).append(
        f"healthy streaming_stt session: {len(rounds)} rounds, WER "
        + (f"{min(ok_rounds):.3f}-{max(ok_rounds):.3f}" if ok_rounds else "n/a")
        + f", {len(wers) - len(ok_rounds)} failed rounds")
    lines = [f"# Fuzzing every protocol of a real server (`{command}`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine ({os.cpu_count()} cores, "
             "shared with other work: this is a stability bench, not a latency bench, so load from "
             "elsewhere only slows it down).", "",
             f"- `uptime` at start: `{load_start}`", f"- `uptime` at end: `{load_end}`",
             f"- server: `asrhub serve`, every protocol, Whisper `{args.model}`, 127.0.0.1, own temp state_dir; "
             f"seed {args.seed}, Hypothesis pool {args.pool} per protocol, one oversized frame every "
             f"{args.oversized_every} messages; fuzzing took {result['elapsed']:.0f} s "
             f"(limit {args.time_limit:.0f} s)", "",
             "## Messages and replies", "", *rows, "",
             "Message kinds per protocol (hypothesis = drawn from tests/test_fuzz.py's strategies, "
             "mutated = those examples changed, the rest this bench's own generators):", ""]
    for target, kinds in result["kinds"].items():
        lines.append(f"- {target}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    lines += ["", "## Server process", "", *sample_rows, "",
              f"Log: {scan.lines} lines, by level {dict(sorted(scan.by_level.items()))}, "
              f"{scan.error_count} error-level, {scan.tracebacks} tracebacks, {scan.not_json} not JSON.", ""]
    if scan.errors:
        lines += ["Error-level lines (first few):", "", "```", *scan.errors, "```", ""]
    lines += ["## Healthy concurrent session (streaming_stt, real-time pace, "
              f"`{CLIP}`)", "",
              "Seconds per round, and per phase: connect (WebSocket open and the greeting), start "
              "(send), send (the clip at real-time pace, then stop), final (stop → session_ended).",
              "", "| round | WER | seconds | connect | start | send | final |",
              "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        failure = f" ({r['text'][:80]})" if r["wer"] != r["wer"] else ""
        phases = r.get("phases", {})
        cells = " | ".join(f"{phases[k]:.2f}" if k in phases else "—"
                           for k in ("connect", "start", "send", "final"))
        lines.append(f"| {i} | {r['wer']:.3f}{failure} | {r['seconds']:.1f} | {cells} |")
    if rounds:
        lines += ["", f"Last transcript: “{rounds[-1]['text']}”"]
    lines += ["", "## Conclusion", "", "Held:", "", *[f"- {h}" for h in held], ""]
    lines += ["Did not hold:", "", *([f"- {f}" for f in failed] or ["- nothing"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

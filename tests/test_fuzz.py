"""Fuzzing every protocol through the real transport (Hypothesis, seeded for CI).

A real server on loopback with every WebSocket protocol, the Wyoming TCP listener and the fake
engines (no model loads).
For each protocol, Hypothesis generates short sequences of messages: JSON objects built from the
protocol's own vocabulary with values of every JSON type (NaN, Infinity, huge integers, lone
surrogates, deep nesting included), arbitrary text and arbitrary bytes. Whatever arrives, the
hub answers with the protocol's own errors: a connection is never closed as an internal error
(1011), no reply carries an internal error, and the server stays healthy for the next client.

Wyoming (raw TCP, a JSON header line + optional data + payload per the ``wyoming`` package's
framing) gets byte streams of framed events: its own event types and data keys, lengths that
lie, headers that are not JSON objects, garbage lines, deep nesting and raw bytes. Bad input
gets an ``error`` event and ends only that connection; a healthy client still transcribes.

The strategies (:func:`messages`, :func:`wyoming_messages`) are imported by bench/fuzz.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asrhub.server import Server
from asrhub.testing import make_hub

PATHS = {
    "ptt": "/ws/asr",
    "streaming_stt": "/",
    "vad_stream": "/",
    "file_transcription": "/",
    "session_broadcast": "/ws/asr/fuzz?mode=sender",
    "openai_api": "/v1/realtime?intent=transcription",
    "funasr_runtime": "/",
}
VOCABULARY = {
    "ptt": ["type", "timestamp", "data", "language", "start", "stop", "audio", "ping"],
    "streaming_stt": ["command", "start", "stop", "language", "ping", "format"],
    "vad_stream": ["command", "user_id", "required", "sample_rate", "language", "batch_start",
                   "batch_end", "speaker_register_start", "speaker_register_end",
                   "speaker_verify_enable", "speaker_list", "ping"],
    "file_transcription": ["type", "data", "upload_request", "upload_data", "task_status",
                           "file_name", "file_size", "file_hash", "task_id", "chunk_index",
                           "file_data", "output_format", "chunked", "force_refresh"],
    "session_broadcast": ["close", "type", "language"],
    "openai_api": ["type", "event_id", "session", "transcription_session.update",
                   "input_audio_buffer.append", "input_audio_buffer.commit", "audio",
                   "input_audio_format", "turn_detection", "input_audio_transcription"],
    "funasr_runtime": ["mode", "wav_name", "wav_format", "audio_fs", "is_speaking", "is_end",
                       "chunk_size", "hotwords", "itn", "svs_lang", "2pass", "offline", "online"],
}

WYOMING_TYPES = ["describe", "info", "ping", "pong", "transcribe", "audio-start", "audio-chunk",
                 "audio-stop", "select-program", "transcript", "error", "run-pipeline"]
WYOMING_KEYS = ["rate", "width", "channels", "language", "name", "context", "timestamp",
                "transcript_streaming", "text", "code"]
VOCABULARY["wyoming"] = WYOMING_TYPES + WYOMING_KEYS

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["\ud800", "../x", "x\u0000y", "<script>", "", "1e400"]))


def json_values(words: list[str]):
    keys = st.sampled_from(words) | st.text(max_size=8)
    leaves = scalars | st.sampled_from(words)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


def messages(protocol: str):
    words = VOCABULARY[protocol]
    objects = st.dictionaries(st.sampled_from(words), json_values(words), min_size=1, max_size=5)
    as_json = objects.map(lambda obj: json.dumps(obj, allow_nan=True))
    deep = st.integers(min_value=50, max_value=5000).map(lambda n: "[" * n + "]" * n)
    return st.one_of(as_json, as_json, as_json, st.text(max_size=200), deep,
                     st.binary(max_size=4096))


def _wyoming_frame(event_type, data, extra, payload, lie) -> bytes:
    """One event framed as the ``wyoming`` package frames it, or with lengths that lie."""
    extra_bytes = json.dumps(extra, allow_nan=True).encode("utf-8", "surrogatepass") if extra else b""
    header: dict = {"type": event_type, "version": "1.5.3"}
    if data is not None:
        header["data"] = data
    if extra_bytes:
        header["data_length"] = len(extra_bytes)
    if payload:
        header["payload_length"] = len(payload)
    if lie is not None:
        header[lie[0]] = lie[1]
    line = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass") + b"\n"
    return line + extra_bytes + payload


def wyoming_messages():
    """Byte strings a Wyoming client could send: framed events of the protocol's own types with
    data of every JSON type, lengths that lie, bad headers, garbage lines and raw bytes."""
    words = VOCABULARY["wyoming"]
    event_types = st.sampled_from(WYOMING_TYPES) | st.text(max_size=70)
    data = st.none() | st.dictionaries(st.sampled_from(WYOMING_KEYS) | st.text(max_size=8),
                                       json_values(words), max_size=5) | json_values(words)
    extra = st.none() | st.dictionaries(st.sampled_from(WYOMING_KEYS), json_values(words), max_size=3)
    lengths = st.sampled_from(["data_length", "payload_length"])
    lies = st.none() | st.tuples(lengths, scalars | st.integers(min_value=-5, max_value=5000)
                                 | st.sampled_from([10**9, 2**63, -1]))
    framed = st.builds(_wyoming_frame, event_types, data, extra, st.binary(max_size=2048), lies)
    audio = st.builds(lambda rate, width, channels, payload: _wyoming_frame(
        "audio-chunk", {"rate": rate, "width": width, "channels": channels}, None, payload, None),
        st.sampled_from([16000, 8000, 44100, 0, -1, 10**12]), st.sampled_from([1, 2, 4, 3, 0]),
        st.sampled_from([1, 2, 0, 1000]), st.binary(max_size=4096))
    start = st.sampled_from([_wyoming_frame("transcribe", {"language": "en"}, None, b"", None),
                             _wyoming_frame("audio-start", {"rate": 16000, "width": 2, "channels": 1},
                                            None, b"", None),
                             _wyoming_frame("audio-stop", {}, None, b"", None)])
    line = st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass") + b"\n")
    deep = st.integers(min_value=50, max_value=5000).map(lambda n: b"[" * n + b"]" * n + b"\n")
    return st.one_of(framed, framed, audio, start, line, deep, st.binary(max_size=4096))


class Background:
    """The server runs in its own event loop thread; Hypothesis drives it synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}},
                        "protocols": {"wyoming": {"idle_timeout_s": 5.0}}},
                       only=[*PATHS, "wyoming"], fake_engines=True)
        self.server = Server(hub)
        self.call(self.server.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def background():
    bg = Background()
    yield bg
    bg.close()


def drain(ws) -> list[str | bytes]:
    got = []
    while True:
        try:
            got.append(ws.recv(timeout=0.15))
        except (TimeoutError, ConnectionClosed):
            return got


def healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        return resp.status == 200


@pytest.mark.slow
@pytest.mark.parametrize("protocol", list(PATHS))
def test_any_message_sequence_gets_the_protocols_own_answers(background, protocol):
    port = background.server.ports[protocol]
    url = f"ws://127.0.0.1:{port}{PATHS[protocol]}"
    subprotocols = ["binary"] if protocol == "funasr_runtime" else None

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(messages(protocol), min_size=1, max_size=6))
    def run(sequence):
        with connect(url, open_timeout=10, close_timeout=2, max_size=None,
                     subprotocols=subprotocols) as ws:
            replies = []
            for message in sequence:
                try:
                    ws.send(message)
                except ConnectionClosed:
                    break
                replies += drain(ws)
            replies += drain(ws)
            code = ws.protocol.close_code
            assert code != 1011, f"internal error closing on {sequence!r}: {ws.protocol.close_reason}"
            for reply in replies:
                if isinstance(reply, str):
                    assert "internal error" not in reply.lower(), (sequence, reply)
                    assert "Traceback" not in reply, (sequence, reply)

    run()
    assert healthy(port)
    counters = background.server.hub.counters[protocol]
    internal = {code for code in counters.errors if "internal" in str(code).lower()}
    assert not internal, counters.errors


def wyoming_answers(sock: socket.socket) -> tuple[list, bool]:
    """The events the server sent until it closed the connection or went quiet, and whether
    it closed. Read with the ``wyoming`` package's own reader."""
    from wyoming.event import read_event

    data, closed = b"", False
    sock.settimeout(0.3)
    while True:
        try:
            got = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not got:
            closed = True
            break
        data += got
    stream, events = io.BytesIO(data), []
    while (event := read_event(stream)) is not None:  # type: ignore[arg-type]
        events.append(event)
    return events, closed


def wyoming_transcribes(port: int) -> str:
    """A healthy client: one request with the package's own framing; the transcript's text."""
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop

    from asrhub_plugins.wyoming.messages import frame

    audio = (b"\x10\x00" * 1600) * 10  # 1 s of 16 kHz int16 (the fake engine counts it)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(frame(e.event()) for e in (
            Transcribe(language="en"), AudioStart(rate=16000, width=2, channels=1),
            AudioChunk(rate=16000, width=2, channels=1, audio=audio), AudioStop())))
        sock.settimeout(10)
        reader = sock.makefile("rb")
        from wyoming.event import read_event

        while (event := read_event(reader)) is not None:  # type: ignore[arg-type]
            if Transcript.is_type(event.type):
                return Transcript.from_event(event).text
    return ""


@pytest.mark.slow
def test_any_wyoming_byte_stream_gets_an_error_event_or_nothing(background):
    port = background.server.ports["wyoming"]
    expected = wyoming_transcribes(port)
    assert expected == "w1 w2"  # the fake engine's words for 1 s of audio

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(wyoming_messages(), min_size=1, max_size=6))
    def run(sequence):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for message in sequence:
                try:
                    sock.sendall(message)
                except (BrokenPipeError, ConnectionResetError):
                    break
            events, _ = wyoming_answers(sock)
        for event in events:
            if event.type == "error":
                code = event.data.get("code")
                assert code != "internal_error", (sequence, event.data)
                assert "Traceback" not in str(event.data.get("text")), (sequence, event.data)

    run()
    assert wyoming_transcribes(port) == expected  # the server still serves a healthy client
    counters = background.server.hub.counters["wyoming"]
    internal = {code for code in counters.errors if "internal" in str(code).lower()}
    assert not internal, counters.errors

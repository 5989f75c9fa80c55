"""Fuzzing every WebSocket protocol through the real transport (Hypothesis, seeded for CI).

A real server on loopback with every WebSocket protocol and the fake engines (no model loads).
For each protocol, Hypothesis generates short sequences of messages: JSON objects built from the
protocol's own vocabulary with values of every JSON type (NaN, Infinity, huge integers, lone
surrogates, deep nesting included), arbitrary text and arbitrary bytes. Whatever arrives, the
hub answers with the protocol's own errors: a connection is never closed as an internal error
(1011), no reply carries an internal error, and the server stays healthy for the next client.
"""

from __future__ import annotations

import asyncio
import json
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


class Background:
    """The server runs in its own event loop thread; Hypothesis drives it synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}}, only=list(PATHS),
                       fake_engines=True)
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

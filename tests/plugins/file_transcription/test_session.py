"""The session state machine driven with plain messages (no socket): every error of the seed's
table, duplicate chunks, incomplete and resumed uploads, joining an upload already queued,
whole-file hash checks. Tasks that get queued run for real (Whisper tiny.en, Silero, resemblyzer)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import structlog

from asrhub.executor import Priority
from asrhub.protocol import CloseInfo
from asrhub.testing import RecordingChannel, make_hub, wer
from asrhub_plugins.file_transcription import messages as m
from asrhub_plugins.file_transcription.handler import error_envelope
from asrhub_plugins.file_transcription.service import FileService
from asrhub_plugins.file_transcription.session import ConnState, FileSession

from .conftest import (
    ENGINES,
    OTHER,
    READER,
    chunk_msg,
    clip,
    data_msg,
    joined,
    md5,
    msg,
    reference,
    upload_request,
    write_wav,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
LIMIT_MB = 20


async def make_service(state_dir, engines: dict[str, Any], **sections: Any) -> FileService:
    hub = make_hub({"server": {"state_dir": str(state_dir)}, "engines": engines,
                    "protocols": {"file_transcription": {"max_file_size_mb": LIMIT_MB}}, **sections},
                   only=["file_transcription"])
    hub.make_executor()
    service = FileService(hub, hub.listener("file_transcription").settings)
    await service.start()
    return service


async def close_service(service: FileService) -> None:
    await service.stop()
    await service.hub.executor.shutdown(5.0)
    service.hub.unload_engines()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def service(tmp_path_factory):
    svc = await make_service(tmp_path_factory.mktemp("state"), ENGINES)
    yield svc
    await close_service(svc)


class Client:
    """A session on the kit's RecordingChannel: what it sent, in order; a refused request is
    answered as the core answers it (the route's error envelope and codes)."""

    def __init__(self, service: FileService, scope: str = "", client: str = "peer") -> None:
        self.channel = RecordingChannel(error_envelope, codes=m.CODES, protocol="file_transcription")
        self.sent = self.channel.sent
        self.session = FileSession(service, self.channel, scope=scope, client=client)  # type: ignore[arg-type]
        self.seen = 0

    async def say(self, text: str) -> list[dict[str, Any]]:
        start = len(self.sent)
        await self.channel.deliver(self.session, text)
        self.seen = len(self.sent)
        return self.sent[start:]

    async def close(self) -> None:
        await self.session.on_close(CloseInfo("client closed"))

    async def wait_for(self, kind: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for message in self.sent[self.seen:]:
                self.seen += 1
                if message["type"] == kind:
                    return message
                assert message["type"] != "error", message
            assert asyncio.get_running_loop().time() < deadline, f"no {kind}: {self.sent}"
            await asyncio.sleep(0.02)


def only(replies: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    assert [r["type"] for r in replies] == [kind], replies
    return replies[0]["data"]


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> bytes:
    path = write_wav(tmp_path_factory.mktemp("audio") / "short.wav", clip(READER[1]))
    return path.read_bytes()


async def test_every_error_of_the_seed_table(service, short_wav):
    c = Client(service)
    error = lambda replies: only(replies, "error")  # noqa: E731
    e = error(await c.say(msg("upload_request", file_name="notes.txt", file_size=10, file_hash=md5(b"x"))))
    assert e["error"] == "invalid_file_type" and "wav" in e["message"]
    e = error(await c.say(msg("upload_request", file_name="big.wav", file_size=LIMIT_MB * 2**20 + 1,
                              file_hash=md5(b"x"), upload_mode="chunked", chunk_size=2**20,
                              total_chunks=LIMIT_MB + 1)))
    assert e["error"] == "file_too_large" and str(LIMIT_MB) in e["message"]
    e = error(await c.say(msg("upload_request", file_name="big.wav", file_size=9 * 2**20, file_hash=md5(b"x"))))
    assert e["error"] == "file_too_large" and "chunked" in e["message"]
    # hash_mismatch: the data is not the file announced.
    ready = only(await c.say(upload_request(short_wav, "short.wav")), "upload_ready")
    assert c.session.state is ConnState.AWAITING_DATA
    e = error(await c.say(data_msg(ready["task_id"], short_wav[:-1] + bytes([short_wav[-1] ^ 1]))))
    assert e["error"] == "hash_mismatch" and e["task_id"] == ready["task_id"]
    # chunk_hash_mismatch: a chunk's bytes are not what its hash says.
    ready = only(await c.say(upload_request(short_wav, "short.wav", chunk_size=40_000)), "upload_ready")
    assert c.session.state is ConnState.RECEIVING_CHUNKS
    e = error(await c.say(chunk_msg(ready["task_id"], short_wav, 0, 40_000, bad_hash=True)))
    assert e["error"] == "chunk_hash_mismatch" and e["chunk_index"] == 0
    # session_not_found: data or chunks for an upload that does not exist.
    e = error(await c.say(data_msg("no-such-task", b"abc")))
    assert e["error"] == "session_not_found"
    e = error(await c.say(chunk_msg("no-such-task", b"abc", 0, 3)))
    assert e["error"] == "session_not_found"
    e = error(await c.say(msg("upload_resume", task_id="no-such-task")))
    assert e["error"] == "session_not_found"
    # task_not_found: status of a task that does not exist.
    e = error(await c.say(msg("task_status", task_id="no-such-task")))
    assert e["error"] == "task_not_found"
    # Not in the seed's table: malformed messages; the connection stays usable throughout.
    assert error(await c.say("{oops"))["error"] == "invalid_message"
    assert error(await c.say(msg("transcribe", file="x")))["error"] == "unknown_message_type"
    e = error(await c.say(chunk_msg(ready["task_id"], short_wav, 99, 40_000)))
    assert e["error"] == "invalid_message" and "past the last" in e["message"]
    errors = c.channel.errors
    assert errors.count("session_not_found") == 3 and errors.count("invalid_message") == 2
    assert c.channel.errors_sent == 12
    await c.close()
    assert c.session.state is ConnState.CLOSED


async def test_duplicate_incomplete_resume_and_cache(service, tmp_path):
    data = write_wav(tmp_path / "resume.wav", clip(READER[4])).read_bytes()
    size = 30_000
    total = -(-len(data) // size)
    first = Client(service)
    ready = only(await first.say(upload_request(data, "resume.wav", chunk_size=size)), "upload_ready")
    task_id = ready["task_id"]
    assert ready["total_chunks"] == total and ready["received_chunks"] == []
    ack = only(await first.say(chunk_msg(task_id, data, 0, size)), "chunk_received")
    assert ack["status"] == "received" and ack["progress"] == pytest.approx(100 / total, abs=0.1)
    ack = only(await first.say(chunk_msg(task_id, data, 0, size)), "chunk_received")
    assert ack["status"] == "duplicate" and ack["progress"] == pytest.approx(100 / total, abs=0.1)
    # The last chunk with others missing: acknowledged, then told what is missing.
    replies = await first.say(chunk_msg(task_id, data, total - 1, size))
    assert [r["type"] for r in replies] == ["chunk_received", "error"]
    assert replies[1]["data"]["error"] == "upload_incomplete"
    assert replies[1]["data"]["missing_chunks"] == list(range(1, total - 1))
    await first.close()  # the client goes away; the chunks stay
    # Another connection picks it up by task_id.
    second = Client(service)
    status = only(await second.say(msg("task_status", task_id=task_id)), "task_status")
    assert status["status"] == "uploading" and status["received_chunks"] == [0, total - 1]
    ready = only(await second.say(msg("upload_resume", task_id=task_id)), "upload_ready")
    assert ready["received_chunks"] == [0, total - 1]
    for index in range(1, total - 1):
        replies = await second.say(chunk_msg(task_id, data, index, size))
        assert replies[0]["type"] == "chunk_received" and replies[0]["data"]["status"] == "received"
    assert [r["type"] for r in replies] == ["chunk_received", "upload_complete", "task_queued"]
    assert replies[0]["data"]["progress"] == 100.0
    assert replies[2]["data"]["queue_position"] >= 1
    done = (await second.wait_for("task_complete"))["data"]
    assert done["task_id"] == task_id
    assert wer(reference(READER[4]), done["result"]["text"]) <= 0.25
    # The same file again: the cached result at once, in the format asked for.
    third = Client(service)
    cached = only(await third.say(upload_request(data, "again.wav", output_format="srt")), "task_complete")
    assert cached["task_id"] == task_id and cached["result"]["format"] == "srt"
    assert cached["result"]["text"].startswith("1\n00:00:")
    # force_refresh: transcribed again.
    ready = only(await third.say(upload_request(data, "again.wav", force_refresh=True)), "upload_ready")
    assert ready["task_id"] != task_id
    await third.say(data_msg(ready["task_id"], data))
    again = (await third.wait_for("task_complete"))["data"]
    assert again["task_id"] == ready["task_id"] and again["result"]["text"] == done["result"]["text"]


async def test_second_upload_of_a_queued_file_joins_its_task(service, tmp_path):
    data = write_wav(tmp_path / "join.wav", clip(READER[2])).read_bytes()
    a, b = Client(service), Client(service)
    ready_a = only(await a.say(upload_request(data, "join.wav")), "upload_ready")
    replies = await a.say(data_msg(ready_a["task_id"], data))
    assert [r["type"] for r in replies] == ["upload_complete", "task_queued"]
    ready_b = only(await b.say(upload_request(data, "join.wav", output_format="srt")), "upload_ready")
    assert ready_b["task_id"] == ready_a["task_id"]
    replies = await b.say(data_msg(ready_b["task_id"], data))
    assert replies[0]["type"] == "upload_complete"
    done_a = (await a.wait_for("task_complete"))["data"]
    done_b = (await b.wait_for("task_complete"))["data"]
    assert done_a["result"]["format"] == "json" and done_b["result"]["format"] == "srt"
    assert done_a["result"]["segments"] == done_b["result"]["segments"]


async def test_whole_file_hash_is_checked_and_the_upload_starts_over(service, tmp_path):
    data = write_wav(tmp_path / "hash.wav", clip(READER[1])).read_bytes()
    size = 50_000
    c = Client(service)
    wrong = msg("upload_request", file_name="hash.wav", file_size=len(data), file_hash=md5(b"other"),
                upload_mode="chunked", chunk_size=size, total_chunks=-(-len(data) // size))
    task_id = only(await c.say(wrong), "upload_ready")["task_id"]
    total = -(-len(data) // size)
    for index in range(total):
        replies = await c.say(chunk_msg(task_id, data, index, size))
    assert [r["type"] for r in replies] == ["chunk_received", "error"]
    assert replies[1]["data"]["error"] == "hash_mismatch"
    status = only(await c.say(msg("task_status", task_id=task_id)), "task_status")
    assert status["status"] == "uploading" and status["received_chunks"] == []


async def test_undecodable_file_is_an_invalid_file_type(service):
    junk = b"ID3 this is not an mp3 at all" * 100
    c = Client(service)
    task_id = only(await c.say(upload_request(junk, "junk.mp3")), "upload_ready")["task_id"]
    e = only(await c.say(data_msg(task_id, junk)), "error")
    assert e["error"] == "invalid_file_type" and e["task_id"] == task_id
    status = only(await c.say(msg("task_status", task_id=task_id)), "task_status")
    assert status["status"] == "failed" and status["error"] == "invalid_file_type"


async def test_without_a_speaker_engine_the_file_has_one_speaker(tmp_path):
    svc = await make_service(tmp_path / "state", {**ENGINES, "speaker": "none"})
    try:
        data = write_wav(tmp_path / "one.wav", clip(READER[3])).read_bytes()
        c = Client(svc)
        with structlog.testing.capture_logs() as logs:
            task_id = only(await c.say(upload_request(data, "one.wav")), "upload_ready")["task_id"]
            await c.say(data_msg(task_id, data))
            result = (await c.wait_for("task_complete"))["data"]["result"]
        assert [s["id"] for s in result["speakers"]] == ["speaker_0"]
        assert {s["speaker"] for s in result["segments"]} == {"speaker_0"}
        assert any(e["event"] == "file_diarization_unavailable" and e["log_level"] == "warning"
                   for e in logs)
        assert wer(reference(READER[3]), result["text"]) <= 0.25
    finally:
        await close_service(svc)


async def test_file_pieces_run_at_batch_priority_and_let_live_calls_in(tmp_path):
    """One inference worker: a live call submitted while a long file is being transcribed runs
    between two of the file's pieces, not after the whole file."""
    calls: list[tuple[str | None, Priority]] = []
    svc = await make_service(tmp_path / "state", ENGINES, executor={"workers": 1})
    # Record each executor call's engine tag and priority as it completes.
    svc.hub.executor._on_done = lambda engine, priority, *_: calls.append((engine, priority))
    try:
        data = write_wav(tmp_path / "long.wav", joined([*READER, *OTHER, *READER], gap_s=0.5)).read_bytes()
        c = Client(svc)
        task_id = only(await c.say(upload_request(data, "long.wav")), "upload_ready")["task_id"]
        await c.say(data_msg(task_id, data))
        while True:
            progress = await c.wait_for("task_progress")
            if progress["data"]["progress"] > 15.0:  # the first piece is transcribed
                break
        live = await svc.hub.executor.run(lambda: "live", priority=Priority.LIVE, engine="live-test")
        assert live == "live"
        await c.wait_for("task_complete")
        whisper = [i for i, (engine, _) in enumerate(calls) if engine == "whisper"]
        assert len(whisper) >= 3, calls  # the file went to the engine in pieces
        assert all(calls[i][1] is Priority.BATCH for i in whisper)
        assert all(priority is Priority.BATCH for engine, priority in calls
                   if engine in ("silero", "resemblyzer"))
        live_at = calls.index(("live-test", Priority.LIVE))
        assert whisper[0] < live_at < whisper[-1], calls
    finally:
        await close_service(svc)


async def test_a_span_without_speech_takes_a_neighbours_speaker(service):
    first, second = clip(READER[0]), clip(OTHER[0])
    pause = np.zeros(int(1.5 * 16000), dtype=np.float32)  # nothing the speaker engine can embed
    audio = np.concatenate([first, pause, second])
    edges = np.cumsum([0, len(first), len(pause), len(second)]) / 16000
    spans = [(float(edges[i]), float(edges[i + 1])) for i in range(3)]
    labels = await service.transcriber._speakers(audio, spans, lambda *_: None, 0.0, 0.0)
    assert labels is not None and labels[0] != labels[2] and labels[1] in (labels[0], labels[2])

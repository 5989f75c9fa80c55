"""The file-transcription protocol end to end: a real server on loopback, the seed's own client
(unchanged), Whisper tiny.en + Silero + resemblyzer on LibriVox and speechbrain recordings."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
import pytest_asyncio
import websockets

from asrhub.testing import make_hub, running_server, wer

from .conftest import (
    ENGINES,
    OTHER,
    READER,
    RawClient,
    chunk_msg,
    clip,
    data_msg,
    encode,
    joined,
    load_doc_client,
    md5,
    msg,
    reference,
    upload_request,
    write_wav,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
MAX_WER = 0.25
LIMIT_MB = 50


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory):
    """One server (models loaded once) for the tests of this module."""
    hub = make_hub({"server": {"state_dir": str(tmp_path_factory.mktemp("state"))}, "engines": ENGINES,
                    "protocols": {"file_transcription": {"max_file_size_mb": LIMIT_MB}}},
                   only=["file_transcription"])
    async with running_server(hub, preload=True) as srv:
        yield srv


def url(server) -> str:
    return f"ws://127.0.0.1:{server.ports['file_transcription']}"


async def doc_transcribe(server, path, **kwargs):
    """The seed's FunASRClient, unchanged: connect, transcribe_file, disconnect."""
    module = load_doc_client()
    client = module.FunASRClient(url(server))
    assert await client.connect()
    try:
        result = await client.transcribe_file(path, **kwargs)
    finally:
        await client.disconnect()
    return result, module.printed


def check_result_shape(result: dict, fmt: str) -> None:
    assert set(result) >= {"text", "segments", "speakers", "duration", "format"}
    assert result["format"] == fmt
    for seg in result["segments"]:
        assert set(seg) >= {"text", "start", "end", "speaker"}
        assert 0 <= seg["start"] < seg["end"] <= result["duration"] + 0.01
    indices = sorted(i for sp in result["speakers"] for i in sp["segments"])
    assert indices == list(range(len(result["segments"])))
    for sp in result["speakers"]:
        assert set(sp) == {"id", "name", "segments"}
        assert all(result["segments"][i]["speaker"] == sp["id"] for i in sp["segments"])


async def test_single_upload_json_then_cached_srt(server, tmp_path):
    path = write_wav(tmp_path / "dashwood.wav", clip(READER[0]))
    result, printed = await doc_transcribe(server, path, output_format="json")
    assert "使用单文件上传模式" in printed and "✓ 转录完成" in printed
    check_result_shape(result, "json")
    assert wer(reference(READER[0]), result["text"]) <= MAX_WER
    assert result["duration"] == pytest.approx(7.1, abs=0.05)
    progress = [float(m.group(1)) for line in printed if (m := re.match(r"转录进度: ([\d.]+)%", line))]
    assert progress and progress == sorted(progress) and progress[-1] == 100.0
    # The same file again, as SRT: the cached result at once.
    srt, printed = await doc_transcribe(server, path, output_format="srt")
    assert "✓ 使用缓存结果" in printed and not any(line.startswith("转录进度") for line in printed)
    check_result_shape(srt, "srt")
    assert srt["segments"] == result["segments"]
    cues = srt["text"].strip().split("\n\n")
    assert len(cues) >= len(result["segments"])  # long segments are cut into readable cues
    first = cues[0].split("\n")
    assert first[0] == "1"
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", first[1])
    assert first[2].startswith("<speaker_0>")


async def test_chunked_upload_of_a_large_m4a(server, tmp_path):
    names = READER[:4]
    # Apple Lossless in an .m4a: 64 kHz stereo 24-bit with light noise is > 5 MB in ~24 s.
    path = encode(joined(names, gap_s=0.5), tmp_path / "lecture.m4a", container="ipod", codec="alac",
                  rate=64000, sample_format="s32p", channels=2, noise=0.003)
    size = path.stat().st_size
    assert size > 5 * 1024 * 1024
    total = -(-size // (1024 * 1024))
    result, printed = await doc_transcribe(server, path, output_format="json")
    assert f"使用分片上传模式（{total}个分片）" in printed
    assert f"上传进度: 100.0% ({total}/{total})" in printed
    assert "✓ 所有分片上传完成，等待处理..." in printed and "✓ 转录完成" in printed
    check_result_shape(result, "json")
    assert wer(reference(*names), result["text"]) <= MAX_WER
    assert result["duration"] == pytest.approx(sum(clip(n).size / 16000 + 0.5 for n in names), abs=0.1)


async def test_two_speakers_are_told_apart(server, tmp_path):
    order = [READER[0], OTHER[0], READER[1], OTHER[1], READER[2], OTHER[2]]
    path = write_wav(tmp_path / "dialogue.wav", joined(order, gap_s=1.0))
    result, _ = await doc_transcribe(server, path)
    check_result_shape(result, "json")
    assert [s["id"] for s in result["speakers"]] == ["speaker_0", "speaker_1"]
    assert [s["name"] for s in result["speakers"]] == ["说话人1", "说话人2"]
    assert [s["speaker"] for s in result["segments"]] == ["speaker_0", "speaker_1"] * 3
    assert wer(reference(*order), result["text"]) <= MAX_WER


@pytest.mark.parametrize("ext", ["wav", "mp3", "mp4", "m4a", "flac", "aac", "ogg", "opus"])
async def test_every_container_of_the_seed_decodes(server, tmp_path, ext):
    audio = clip(READER[2])
    path = tmp_path / f"clip.{ext}"
    if ext == "wav":
        write_wav(path, audio)
    elif ext == "mp4":
        encode(audio, path, container="mp4", codec="aac", rate=44100, with_video=True)
    else:
        encode(audio, path)
    result, _ = await doc_transcribe(server, path)
    assert wer(reference(READER[2]), result["text"]) <= MAX_WER, (ext, result["text"])
    assert result["duration"] == pytest.approx(audio.size / 16000, abs=0.15)


async def test_duplicate_chunk_is_acknowledged_not_stored(server, tmp_path):
    data = write_wav(tmp_path / "dup.wav", clip(READER[4])).read_bytes()
    size = 20_000
    total = -(-len(data) // size)
    c = await RawClient.connect(url(server))
    ready = await c.ask(upload_request(data, "dup.wav", chunk_size=size))
    task_id = ready["data"]["task_id"]
    assert ready["type"] == "upload_ready" and ready["data"]["total_chunks"] == total
    statuses = []
    for index in [0, 1, 1, *range(2, total)]:
        ack = await c.ask(chunk_msg(task_id, data, index, size))
        assert ack["type"] == "chunk_received" and ack["data"]["chunk_index"] == index
        statuses.append((index, ack["data"]["status"], ack["data"]["progress"]))
    assert statuses[1] == (1, "received", pytest.approx(200 / total, abs=0.1))
    assert statuses[2] == (1, "duplicate", pytest.approx(200 / total, abs=0.1))
    assert statuses[-1][2] == 100.0
    done, before = await c.until("task_complete")
    assert [m["type"] for m in before][:2] == ["upload_complete", "task_queued"]
    assert wer(reference(READER[4]), done["data"]["result"]["text"]) <= MAX_WER
    await c.close()


async def test_every_error_over_the_wire(server, tmp_path):
    data = write_wav(tmp_path / "err.wav", clip(READER[1])).read_bytes()
    c = await RawClient.connect(url(server))

    async def error(text: str) -> dict:
        reply = await c.ask(text)
        assert reply["type"] == "error", reply
        assert set(reply["data"]) >= {"error", "message"}
        return reply["data"]

    big = msg("upload_request", file_name="huge.wav", file_size=(LIMIT_MB + 1) * 2**20, file_hash=md5(b""),
              upload_mode="chunked", chunk_size=2**20, total_chunks=LIMIT_MB + 1)
    assert (await error(big))["error"] == "file_too_large"
    assert (await error(upload_request(data, "err.docx")))["error"] == "invalid_file_type"
    ready = await c.ask(upload_request(data, "err.wav"))
    assert (await error(data_msg(ready["data"]["task_id"], data[::-1])))["error"] == "hash_mismatch"
    ready = await c.ask(upload_request(data, "err.wav", chunk_size=30_000))
    e = await error(chunk_msg(ready["data"]["task_id"], data, 1, 30_000, bad_hash=True))
    assert e["error"] == "chunk_hash_mismatch" and e["chunk_index"] == 1
    assert (await error(data_msg("3f1e0000-0000-0000-0000-000000000000", data)))["error"] == "session_not_found"
    assert (await error(msg("task_status", task_id="nope")))["error"] == "task_not_found"
    junk = b"\x00\x01 not audio" * 500
    ready = await c.ask(upload_request(junk, "junk.ogg"))
    assert (await error(data_msg(ready["data"]["task_id"], junk)))["error"] == "invalid_file_type"
    await c.ws.send(b"\x00binary")
    assert (await c.recv())["data"]["error"] == "invalid_message"
    # Still usable after every error: a real upload completes.
    ready = await c.ask(upload_request(data, "err.wav"))
    await c.send(data_msg(ready["data"]["task_id"], data))
    done, _ = await c.until("task_complete")
    assert wer(reference(READER[1]), done["data"]["result"]["text"]) <= MAX_WER
    # Over the seed's 10 MB message limit: file_too_large, the connection stays; over four
    # times the limit the message is not read and the connection is closed (1009).
    too_big = await c.ask(json.dumps({"type": "upload_data", "data": {"file_data": "A" * (10 * 2**20)}}))
    assert too_big["type"] == "error" and too_big["data"]["error"] == "file_too_large"
    await c.ws.send(json.dumps({"type": "upload_data", "data": {"file_data": "A" * (41 * 2**20)}}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await c.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_queue_positions_and_wait_estimate(server, tmp_path):
    long_file = write_wav(tmp_path / "long.wav", joined(READER, gap_s=0.5)).read_bytes()
    files = [write_wav(tmp_path / f"q{i}.wav", clip(name)).read_bytes()
             for i, name in enumerate([OTHER[0], OTHER[1]])]
    first = await RawClient.connect(url(server))
    ready = await first.ask(upload_request(long_file, "long.wav"))
    await first.send(data_msg(ready["data"]["task_id"], long_file))
    while True:  # until the first file is being transcribed
        message = await first.recv()
        if message["type"] == "task_progress" and message["data"]["progress"] >= 15.0:
            break
    clients = []
    for index, data in enumerate(files):
        c = await RawClient.connect(url(server))
        ready = await c.ask(upload_request(data, f"q{index}.wav"))
        replies = [await c.ask(data_msg(ready["data"]["task_id"], data)), await c.recv()]
        assert [r["type"] for r in replies] == ["upload_complete", "task_queued"]
        queued = replies[1]["data"]
        assert queued["queue_position"] == index + 1
        assert queued["estimated_wait_minutes"] > 0
        clients.append(c)
    # When the first finishes the last one moves up (between, it may hear its place again:
    # a waiting task is re-announced every queue_update_s).
    for _ in range(100):
        moved, _ = await clients[1].until("task_queued")
        if moved["data"]["queue_position"] != 2:
            break
    assert moved["data"]["queue_position"] == 1
    for c, name in zip(clients, [OTHER[0], OTHER[1]], strict=True):
        done, _ = await c.until("task_complete")
        assert wer(reference(name), done["data"]["result"]["text"]) <= MAX_WER
        await c.close()
    done, _ = await first.until("task_complete")
    assert wer(reference(*READER), done["data"]["result"]["text"]) <= MAX_WER
    # A new connection asks for the result by task_id.
    task_id = done["data"]["task_id"]
    other = await RawClient.connect(url(server))
    status = await other.ask(msg("task_status", task_id=task_id, output_format="srt"))
    assert status["type"] == "task_status" and status["data"]["status"] == "completed"
    result = await other.recv()
    assert result["type"] == "task_complete" and result["data"]["result"]["format"] == "srt"
    await other.close()
    await first.close()


async def test_plain_http_get_describes_the_service(server):
    async with aiohttp.ClientSession() as http:
        port = server.ports["file_transcription"]
        async with http.get(f"http://127.0.0.1:{port}/") as resp:
            info = await resp.json()
        assert info["protocol"] == "file_transcription" and "m4a" in info["supported_formats"]
        async with http.get(f"http://127.0.0.1:{port}/health") as resp:
            assert resp.status == 200



def srt_cues(text: str) -> list[tuple[float, float, list[str]]]:
    def seconds(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        start, end = (seconds(x) for x in lines[1].split(" --> "))
        cues.append((start, end, lines[2:]))
    return cues


@pytest.mark.slow
async def test_srt_cues_are_cut_at_word_times_within_subtitle_limits(server, tmp_path):
    """A ~25 s recording uploaded for SRT: the words come from the engine's word timestamps,
    every cue at most 7 s and two lines of 42 columns (issue 16; before, one cue held a whole
    20 s segment)."""
    from asrhub.formats import MAX_CUE_S, MAX_LINE_WIDTH, MAX_LINES, width

    names = READER[:3]
    path = write_wav(tmp_path / "three.wav", joined(names, gap_s=0.5))
    srt, _ = await doc_transcribe(server, path, output_format="srt")
    assert all("words" not in seg for seg in srt["segments"])  # the seed's row shape
    cues = srt_cues(srt["text"])
    assert len(cues) >= len(srt["segments"])
    for start, end, lines in cues:
        assert 0 < end - start <= MAX_CUE_S + 0.01
        assert 1 <= len(lines) <= MAX_LINES
        assert all(width(line.replace("<speaker_0>", "").strip()) <= MAX_LINE_WIDTH for line in lines)
    spoken = " ".join(" ".join(lines).replace("<speaker_0>", "") for _, _, lines in cues)
    assert wer(" ".join(reference(n) for n in names), spoken) <= MAX_WER

"""Wire format: parsing of what the client sends, shape of what the server sends."""

from __future__ import annotations

import base64
import json
import re

import pytest

from asrhub_plugins.file_transcription import messages as m


def parse(kind: str, **data) -> m.ClientMessage:
    return m.parse_message(json.dumps({"type": kind, "data": data}))


HASH = "d41d8cd98f00b204e9800998ecf8427e"


def test_single_upload_request_as_in_the_seed():
    req = parse("upload_request", file_name="audio.mp3", file_size=1048576, file_hash=HASH,
                output_format="json", force_refresh=False)
    assert isinstance(req, m.UploadRequest)
    assert (req.file_name, req.file_size, req.file_hash, req.output_format) == ("audio.mp3", 1048576, HASH, "json")
    assert not req.chunked and not req.force_refresh and req.extension == "mp3"


def test_chunked_upload_request_as_in_the_seed():
    req = parse("upload_request", file_name="large_audio.M4A", file_size=52428800, file_hash=HASH.upper(),
                chunk_size=1048576, total_chunks=50, upload_mode="chunked", output_format="srt",
                force_refresh=True)
    assert isinstance(req, m.UploadRequest)
    assert req.chunked and req.chunk_size == 1048576 and req.total_chunks == 50
    assert req.extension == "m4a" and req.file_hash == HASH and req.output_format == "srt"
    assert req.force_refresh


@pytest.mark.parametrize("data, words", [
    ({"file_size": 10, "file_hash": HASH}, "file_name"),
    ({"file_name": "a.wav", "file_hash": HASH}, "file_size"),
    ({"file_name": "a.wav", "file_size": 10, "file_hash": "xyz"}, "MD5"),
    ({"file_name": "a.wav", "file_size": "10", "file_hash": HASH}, "file_size"),
    ({"file_name": "a.wav", "file_size": True, "file_hash": HASH}, "file_size"),
    ({"file_name": "a.wav", "file_size": 10, "file_hash": HASH, "output_format": "vtt"}, "output_format"),
    ({"file_name": "a.wav", "file_size": 10, "file_hash": HASH, "upload_mode": "chunked"}, "chunk_size"),
    ({"file_name": "a.wav", "file_size": 10, "file_hash": HASH, "upload_mode": "chunked",
      "chunk_size": 4, "total_chunks": 2}, "make 3"),
    ({"file_name": "a.wav", "file_size": 10, "file_hash": HASH, "upload_mode": "stream"}, "upload_mode"),
])
def test_bad_upload_requests_name_the_field(data, words):
    with pytest.raises(m.ProtocolError) as info:
        parse("upload_request", **data)
    assert info.value.code == m.INVALID_MESSAGE
    assert words in info.value.message


def test_chunk_and_data_messages():
    payload = base64.b64encode(b"abc").decode()
    chunk = parse("upload_chunk", task_id="t-1", chunk_index=3, chunk_size=3, chunk_hash=HASH,
                  chunk_data=payload, is_last=True)
    assert isinstance(chunk, m.UploadChunk)
    assert chunk.chunk_data == b"abc" and chunk.chunk_index == 3 and chunk.is_last
    data = parse("upload_data", task_id="t-1", file_data=payload)
    assert isinstance(data, m.UploadData) and data.file_data == b"abc"
    with pytest.raises(m.ProtocolError, match="base64"):
        parse("upload_data", task_id="t-1", file_data="not base64!")
    with pytest.raises(m.ProtocolError, match="task id"):
        parse("upload_data", task_id="../etc", file_data=payload)
    with pytest.raises(m.ProtocolError, match=">= 0"):
        parse("upload_chunk", task_id="t", chunk_index=-1, chunk_hash=HASH, chunk_data=payload)


def test_added_messages():
    status = parse("task_status", task_id="abc", output_format="srt")
    assert isinstance(status, m.TaskStatusRequest) and status.output_format == "srt"
    assert isinstance(parse("upload_resume", task_id="abc"), m.UploadResume)


@pytest.mark.parametrize("text, code", [
    ("not json", m.INVALID_MESSAGE),
    ("[1, 2]", m.INVALID_MESSAGE),
    ('{"data": {}}', m.INVALID_MESSAGE),
    ('{"type": "upload_request", "data": []}', m.INVALID_MESSAGE),
    ('{"type": "start_transcription", "data": {}}', m.UNKNOWN_MESSAGE_TYPE),
])
def test_malformed_messages(text, code):
    with pytest.raises(m.ProtocolError) as info:
        m.parse_message(text)
    assert info.value.code == code


def test_server_messages_have_the_seed_shape():
    error = m.error(m.FILE_TOO_LARGE, "too big")
    assert error == {"type": "error", "data": {"error": "file_too_large", "message": "too big"}}
    ready = m.upload_ready("t", chunked=True, chunk_size=1024, total_chunks=5)
    assert ready["data"]["chunk_size"] == 1024 and ready["data"]["total_chunks"] == 5
    assert ready["data"]["message"] == "准备接收分片数据"
    assert m.upload_ready("t", chunked=False)["data"] == {"task_id": "t", "message": "准备接收文件数据"}
    ack = m.chunk_received("t", 0, 2.0, duplicate=False)["data"]
    assert ack == {"task_id": "t", "chunk_index": 0, "progress": 2.0, "status": "received"}
    assert m.chunk_received("t", 0, 2.0, duplicate=True)["data"]["status"] == "duplicate"
    queued = m.task_queued("t", 3, 5)["data"]
    assert queued["queue_position"] == 3 and queued["message"] == "任务排队中，位置: 3"
    progress = m.task_progress("t", 45.04, "processing", "正在处理音频...")["data"]
    assert progress["progress"] == 45.0 and progress["status"] == "processing"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", progress["timestamp"])
    done = m.task_complete("t", {"text": "x"}, 0.0)
    assert done["data"]["timestamp"] == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # RecursionError in json without the kit's loads
    '{"type": "upload_request", "data": {"file_size": ' + "9" * 4301 + "}}",  # int over 4300 digits
    '{"type": "upload_request", "data": {"file_size": NaN}}',
    '{"type": "upload_request", "data": {"file_size": Infinity}}',
    '{"type": "upload_request", "data": {"file_size": 1e400}}',
    '{"type": "task_status", "data": {"task_id": "a", "output_format": "\\ud800"}}',
    '{"type": "upload_request", "data": {"file_name": "\\ud800.wav", "file_size": 1, '
    '"file_hash": "d41d8cd98f00b204e9800998ecf8427e"}}',
])
def test_every_parse_is_total(text):
    """Issue 18 (4): deep nesting, huge integers, NaN, lone surrogates are invalid_message."""
    with pytest.raises(m.ProtocolError) as info:
        m.parse_message(text)
    assert info.value.code == m.INVALID_MESSAGE


def test_error_texts_keep_their_closing_quote():
    """Issue 18 (13): a long value is shortened inside its quotes, not cut through them."""
    with pytest.raises(m.ProtocolError) as info:
        parse("upload_request", file_name="a.wav", file_size=1, file_hash=HASH,
              upload_mode="x" * 100)
    assert info.value.message.endswith("'xxxxxxxxxxxxxxxxxxxx'…")
    with pytest.raises(m.ProtocolError) as info:
        parse("upload_request", file_name="a.wav", file_size="1" * 100, file_hash=HASH)
    assert "'" + "1" * 40 + "'…" in info.value.message
    with pytest.raises(m.ProtocolError) as info:
        m.parse_message(json.dumps({"type": "y" * 100}))
    assert info.value.code == m.UNKNOWN_MESSAGE_TYPE and "'" + "y" * 40 + "'…;" in info.value.message
    assert m.show("short") == "'short'" and m.show("\ud800") == "'\\ud800'"

"""Issue 18's file_transcription findings and issue 11's queue gap, each against a real server
on loopback: transcripts by MD5 alone, upload squatting, lone surrogates, parsers that must be
total, error texts, private directories, and a waiting client kept informed (the seed's client)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import threading
import time

import pytest
import pytest_asyncio
import structlog
import websockets

from asrhub.executor import Priority
from asrhub.testing import make_hub, running_server, wer
from asrhub_plugins.file_transcription.handler import SERVICE_KEY

from .conftest import (
    READER,
    RawClient,
    chunk_msg,
    clip,
    data_msg,
    load_doc_client,
    md5,
    msg,
    reference,
    upload_request,
    write_wav,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_WER = 0.25
# Small models, no speaker model: these tests are about the protocol, not diarization.
ENGINES = {"asr": "whisper", "vad": "silero", "speaker": "none",
           "whisper": {"model": "tiny.en", "language": "en"}}


def url(server, token: str | None = None) -> str:
    base = f"ws://127.0.0.1:{server.ports['file_transcription']}/"
    return base + (f"?token={token}" if token else "")


def service_of(server):
    return next(r.app[SERVICE_KEY] for r in server.runners if SERVICE_KEY in r.app)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def models(tmp_path_factory):
    """Whisper tiny.en + Silero, one inference worker; clients scoped by the token they send."""
    hub = make_hub({"server": {"state_dir": str(tmp_path_factory.mktemp("state"))}, "engines": ENGINES,
                    "executor": {"workers": 1},
                    "protocols": {"file_transcription": {"diarization": False, "cache_scope": "token",
                                                         "queue_update_s": 0.25}}},
                   only=["file_transcription"])
    async with running_server(hub, preload=True) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def light(tmp_path):
    """No models are ever loaded (nothing here is transcribed): small quotas, short idle time."""
    hub = make_hub({"server": {"state_dir": str(tmp_path / "state")},
                    "protocols": {"file_transcription": {
                        "max_pending_per_client": 4, "client_quota_mb": 10,
                        "upload_idle_minutes": 0.02}}},  # 1.2 s
                   only=["file_transcription"])
    async with running_server(hub) as srv:
        yield srv


# --------------------------------------------------------------------------- (1) MD5 alone


@pytest.mark.slow
async def test_a_known_md5_alone_gets_no_transcript(models, tmp_path):
    """Issue 18 (1): the MD5 shortcut answers only the same trust scope, never a size that
    differs; another scope gets the result only by sending the bytes (SHA-256 cache)."""
    data = write_wav(tmp_path / "private.wav", clip(READER[0])).read_bytes()
    alice = await RawClient.connect(url(models, "alice"))
    ready = await alice.ask(upload_request(data, "private.wav"))
    await alice.send(data_msg(ready["data"]["task_id"], data))
    done, _ = await alice.until("task_complete")
    task_id, text = done["data"]["task_id"], done["data"]["result"]["text"]
    assert wer(reference(READER[0]), text) <= MAX_WER
    # The seed's shortcut still works for the same client scope.
    again = await alice.ask(upload_request(data, "again.wav"))
    assert again["type"] == "task_complete" and again["data"]["task_id"] == task_id
    # The attack of the issue: the known hash with file_size 1, never any data.
    attack = await alice.ask(msg("upload_request", file_name="x.wav", file_size=1, file_hash=md5(data)))
    assert attack["type"] == "upload_ready" and attack["data"]["task_id"] != task_id
    refused = await alice.ask(data_msg(attack["data"]["task_id"], b"x"))
    assert refused["type"] == "error" and refused["data"]["error"] == "hash_mismatch"
    chunked = await alice.ask(msg("upload_request", file_name="x.wav", file_size=1, file_hash=md5(data),
                                  upload_mode="chunked", chunk_size=1, total_chunks=1))
    assert chunked["type"] == "upload_ready" and chunked["data"]["received_chunks"] == []
    await alice.close()

    bob = await RawClient.connect(url(models, "bob"))
    ready = await bob.ask(upload_request(data, "private.wav"))  # right MD5 and size, other scope
    assert ready["type"] == "upload_ready" and ready["data"]["task_id"] != task_id
    assert (await bob.ask(msg("task_status", task_id=task_id)))["data"]["error"] == "task_not_found"
    assert (await bob.ask(msg("upload_resume", task_id=task_id)))["data"]["error"] == "session_not_found"
    # Bob sends the file: the hub has these very bytes transcribed; no second transcription.
    await bob.send(data_msg(ready["data"]["task_id"], data))
    same, before = await bob.until("task_complete")
    assert [m["type"] for m in before] == ["upload_complete"]
    assert same["data"]["task_id"] == ready["data"]["task_id"] and same["data"]["result"]["text"] == text
    await bob.close()


@pytest.mark.slow
async def test_an_md5_collision_disables_the_shortcut(models, tmp_path):
    """Chosen-prefix MD5 collisions: two files of one scope with the same MD5 and size but
    different bytes (a forged row stands for the attacker's twin) → no answer by MD5; the
    victim's bytes still get their own transcript by SHA-256."""
    data = write_wav(tmp_path / "victim.wav", clip(READER[1])).read_bytes()
    carol = await RawClient.connect(url(models, "carol"))
    ready = await carol.ask(upload_request(data, "victim.wav"))
    await carol.send(data_msg(ready["data"]["task_id"], data))
    done, _ = await carol.until("task_complete")
    service = service_of(models)
    twin = service.store.create_task(task_id="twin-0001", file_name="twin.wav", file_size=len(data),
                                     file_hash=md5(data), output_format="json", chunked=False,
                                     chunk_size=0, total_chunks=0, scope="token:" + "0" * 24)
    carol_scope = service.store.get(ready["data"]["task_id"]).scope
    twin_key = service.cache_key("f" * 64)
    service.store.update(twin.task_id, scope=carol_scope, sha256="f" * 64, cache_key=twin_key)
    service.store.finish(twin.task_id, twin_key, {"text": "poisoned"}, 1.0)
    again = await carol.ask(upload_request(data, "victim.wav"))
    assert again["type"] == "upload_ready"
    await carol.send(data_msg(again["data"]["task_id"], data))
    own, _ = await carol.until("task_complete")
    assert own["data"]["result"]["text"] == done["data"]["result"]["text"] != "poisoned"
    await carol.close()


# --------------------------------------------------------------------------- (2) squatting


async def test_upload_squatting_is_bounded_and_abandoned_uploads_count_out(light):
    """Issue 18 (2): per-client count and byte quota, uploads idle past upload_idle_minutes
    dropped (chunks deleted), and the queue open again."""
    mb = 1024 * 1024
    tail = b"0123456789"
    squatter = await RawClient.connect(url(light))
    for index in range(3):
        # As in the issue: a large declared file, only its 10-byte last chunk ever sent.
        ready = await squatter.ask(msg("upload_request", file_name=f"{index}.wav", file_size=3 * mb + 10,
                                       file_hash=md5(f"file {index}".encode()), upload_mode="chunked",
                                       chunk_size=mb, total_chunks=4))
        assert ready["type"] == "upload_ready", ready
        ack = await squatter.ask(msg("upload_chunk", task_id=ready["data"]["task_id"], chunk_index=3,
                                     chunk_size=10, chunk_hash=md5(tail), is_last=True,
                                     chunk_data=base64.b64encode(tail).decode()))
        assert ack["type"] == "chunk_received"
        assert (await squatter.recv())["data"]["error"] == "upload_incomplete"
    over = await squatter.ask(msg("upload_request", file_name="big.wav", file_size=3 * mb,
                                  file_hash=md5(b"big"), upload_mode="chunked", chunk_size=mb,
                                  total_chunks=3))
    assert over["data"]["error"] == "queue_full" and "quota" in over["data"]["message"]
    fourth = await squatter.ask(msg("upload_request", file_name="4.wav", file_size=1000,
                                    file_hash=md5(b"4")))
    assert fourth["type"] == "upload_ready"
    fifth = await squatter.ask(msg("upload_request", file_name="5.wav", file_size=1000,
                                   file_hash=md5(b"5"), upload_mode="chunked", chunk_size=100,
                                   total_chunks=10))
    assert fifth["data"]["error"] == "queue_full" and "limit 4" in fifth["data"]["message"]
    await squatter.close()
    # The client is gone; after the idle time its uploads count out (bounded wait).
    service = service_of(light)
    for _ in range(100):
        if not service.store.tasks_in("uploading"):
            break
        await asyncio.sleep(0.1)
    assert not service.store.tasks_in("uploading")
    assert not any(service.store.uploads.iterdir())
    fresh = await RawClient.connect(url(light))
    ok = await fresh.ask(msg("upload_request", file_name="big.wav", file_size=3 * mb,
                             file_hash=md5(b"big"), upload_mode="chunked", chunk_size=mb,
                             total_chunks=3))
    assert ok["type"] == "upload_ready"
    await fresh.close()


async def test_declared_bytes_are_reserved_against_free_disk(tmp_path):
    """Issue 18 (2): the free-space check counts every upload in progress, not each alone."""
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    size = int((free - 256 * 2**20) * 0.6)
    chunk = 7 * 2**20
    hub = make_hub({"server": {"state_dir": str(tmp_path / "state")},
                    "protocols": {"file_transcription": {"max_file_size_mb": free / 2**20,
                                                         "client_quota_mb": 2 * free / 2**20}}},
                   only=["file_transcription"])
    async with running_server(hub) as server:
        c = await RawClient.connect(url(server))
        request = {"file_size": size, "upload_mode": "chunked", "chunk_size": chunk,
                   "total_chunks": -(-size // chunk)}
        first = await c.ask(msg("upload_request", file_name="a.wav", file_hash=md5(b"a"), **request))
        assert first["type"] == "upload_ready"
        second = await c.ask(msg("upload_request", file_name="b.wav", file_hash=md5(b"b"), **request))
        assert second["type"] == "error" and second["data"]["error"] == "server_busy"
        await c.close()


async def test_abandoned_uploads_are_cleaned_on_start_up(tmp_path):
    """Issue 18 (2): idle uploads left by a stopped server do not hold the queue after a start."""
    def sections(idle_minutes: float) -> dict:
        return {"server": {"state_dir": str(tmp_path / "state")},
                "protocols": {"file_transcription": {"upload_idle_minutes": idle_minutes,
                                                     "max_pending_tasks": 2}}}

    data = bytes(range(256)) * 40
    async with running_server(make_hub(sections(15), only=["file_transcription"])) as server:
        c = await RawClient.connect(url(server))
        for index in range(2):
            ready = await c.ask(upload_request(data + bytes([index]), f"{index}.wav", chunk_size=1000))
            ack = await c.ask(chunk_msg(ready["data"]["task_id"], data + bytes([index]), 0, 1000))
            assert ack["type"] == "chunk_received"
        assert (await c.ask(upload_request(data, "full.wav")))["data"]["error"] == "queue_full"
        await c.close()
    spool = tmp_path / "state" / "file_transcription" / "uploads"
    assert len(list(spool.iterdir())) == 2
    await asyncio.sleep(1.0)  # older than the next start's upload_idle_minutes (0.6 s)
    async with running_server(make_hub(sections(0.01), only=["file_transcription"])) as server:
        assert not any(spool.iterdir())
        c = await RawClient.connect(url(server))
        assert (await c.ask(upload_request(data, "ok.wav")))["type"] == "upload_ready"
        await c.close()


# --------------------------------------------------------------------------- (3), (4), (13)


async def test_lone_surrogates_and_unparseable_json_leave_the_connection_usable(light):
    """Issue 18 (3) and (4): every one gets the seed's error; pings are answered, a valid
    request after them is answered, and the connection's summary line is written."""
    hub = light.hub
    before = hub.counter("file_transcription").sessions_total
    c = await RawClient.connect(url(light))
    bad = [
        '{"type": "\\ud800"}',
        '{"type": "upload_request", "data": {"file_name": "\\ud800.wav", "file_size": 5, '
        '"file_hash": "d41d8cd98f00b204e9800998ecf8427e"}}',
        '{"type": "task_status", "data": {"task_id": "\\udfff"}}',
        '{"type": "upload_request", "data": {"file_name": "a.wav", "file_size": 5, '
        '"file_hash": "d41d8cd98f00b204e9800998ecf8427e", "output_format": "\\ud83d"}}',
        "[" * 100_000 + "]" * 100_000,
        '{"type": "upload_request", "data": {"file_size": ' + "7" * 4301 + "}}",
        '{"type": "upload_request", "data": {"file_size": NaN}}',
        '{"type": "upload_request", "data": {"file_size": -Infinity}}',
    ]
    with structlog.testing.capture_logs() as logs:
        for index, text in enumerate(bad):
            reply = await c.ask(text)
            assert reply["type"] == "error", (text[:60], reply)
            assert reply["data"]["error"] in ("invalid_message", "unknown_message_type"), reply
            if index == 0:  # the value is echoed, escaped: the outbox can always encode it
                assert "'\\ud800'" in reply["data"]["message"]
            pong = await c.ws.ping()
            await asyncio.wait_for(pong, 10)
        unknown = await c.ask(msg("task_status", task_id="still-here"))
        assert unknown["data"]["error"] == "task_not_found"
        await c.close()
        for _ in range(100):
            if hub.counter("file_transcription").sessions_total > before:
                break
            await asyncio.sleep(0.05)
    closed = [e for e in logs if e["event"] == "session_closed"]
    assert closed and closed[-1]["errors"] == len(bad) + 1 and closed[-1]["close_code"] == 1000
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


async def test_error_text_keeps_its_closing_quote_and_big_messages_are_answered(light):
    """Issue 18 (13), and the core's size limit with the seed's code: a message over
    max_message_bytes is file_too_large and the connection stays; over four times, 1009."""
    c = await RawClient.connect(url(light))
    reply = await c.ask(msg("upload_request", file_name="a.wav", file_size=1, file_hash=md5(b"a"),
                            upload_mode="chunked-" + "x" * 100))
    assert reply["data"]["error"] == "invalid_message"
    assert reply["data"]["message"].endswith("'chunked-xxxxxxxxxxxx'…")
    too_big = await c.ask(json.dumps({"type": "upload_data", "data": {"file_data": "A" * (10 * 2**20)}}))
    assert too_big["data"]["error"] == "file_too_large"
    assert (await c.ask(msg("task_status", task_id="x")))["data"]["error"] == "task_not_found"
    await c.ws.send(json.dumps({"type": "upload_data", "data": {"file_data": "A" * (41 * 2**20)}}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await c.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_state_and_upload_directories_are_private(light):
    """Issue 18 (13): 0700, not 0755 (uploads are other people's recordings)."""
    root = light.hub.state_dir / "file_transcription"
    for path in (root, root / "uploads"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    c = await RawClient.connect(url(light))
    data = bytes(range(200)) * 10
    ready = await c.ask(upload_request(data, "p.wav", chunk_size=500))
    assert (await c.ask(chunk_msg(ready["data"]["task_id"], data, 0, 500)))["type"] == "chunk_received"
    spool = root / "uploads" / ready["data"]["task_id"]
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert stat.S_IMODE((spool / "data").stat().st_mode) == 0o600
    await c.close()


# --------------------------------------------------------------------------- issue 11 gap


def patient_client(server_url: str, patience: float):
    """The seed's own client (funasr_client.py, unchanged) whose 300 s wait for a message is
    scaled down to ``patience`` seconds; what it receives is kept in ``received``."""
    module = load_doc_client()

    class Client(module.FunASRClient):  # type: ignore[name-defined,misc]
        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.received: list[dict] = []

        async def receive_message(self, timeout=30):
            message = await super().receive_message(timeout=min(timeout, patience))
            self.received.append(message)
            return message

    return Client(server_url)


@pytest.mark.slow
async def test_a_client_waiting_in_the_queue_is_kept_informed(models, tmp_path):
    """Issue 11 (seed gap): a task that waits longer than the client's patience, its position
    unchanged, gets periodic task_queued (position, estimate) and the running one periodic
    task_progress; the seed's client does not give up and gets its transcript."""
    patience = 4.0
    hub = models.hub
    hold = threading.Event()
    # The one inference worker is busy with a long live call: the first file waits in it.
    holder = asyncio.ensure_future(hub.executor.run(lambda: hold.wait(120), priority=Priority.LIVE,
                                                    engine="hold", timeout=10))
    try:
        paths = [write_wav(tmp_path / f"w{i}.wav", clip(READER[i])) for i in (3, 4)]
        clients = [patient_client(url(models, "wait"), patience) for _ in paths]
        for client in clients:
            assert await client.connect()
        running = asyncio.ensure_future(clients[0].transcribe_file(paths[0]))
        for _ in range(200):
            if any(m["type"] == "task_progress" for m in clients[0].received):
                break
            await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(clients[1].transcribe_file(paths[1]))
        started = time.monotonic()
        for _ in range(400):  # bounded: until the wait exceeded the client's patience
            queued = [m for m in clients[1].received if m["type"] == "task_queued"]
            if time.monotonic() - started > patience * 1.5 and len(queued) >= 3:
                break
            assert not waiting.done() and not running.done()
            await asyncio.sleep(0.05)
        assert len(queued) >= 3
        assert {m["data"]["queue_position"] for m in queued} == {1}
        assert all(m["data"]["estimated_wait_minutes"] > 0 for m in queued)
        stalled = [m for m in clients[0].received if m["type"] == "task_progress"]
        assert len(stalled) >= 3 and all(m["data"]["status"] == "processing" for m in stalled)
    finally:
        hold.set()
        await holder
    results = await asyncio.wait_for(asyncio.gather(running, waiting), 300)
    for result, index in zip(results, (3, 4), strict=True):
        assert wer(reference(READER[index]), result["text"]) <= MAX_WER
    for client in clients:
        await client.disconnect()



async def test_tasks_of_the_previous_version_resume_and_old_md5_keys_answer_nothing(tmp_path):
    """A state directory written before this version (MD5-keyed results, no scope): a queued
    task is hashed (SHA-256) and transcribed after the start, a finished one stays reachable by
    its task id, and its MD5 no longer answers an upload_request (fake engines: no model)."""
    import sqlite3

    from .test_units import OLD_TASKS

    root = tmp_path / "state" / "file_transcription"
    (root / "uploads" / "queued-1").mkdir(parents=True)
    audio = write_wav(root / "uploads" / "queued-1" / "audio.wav", clip(READER[0])).read_bytes()
    old_key = f"{md5(b'done')}|fake||en|single"
    db = sqlite3.connect(root / "tasks.sqlite3")
    db.execute(OLD_TASKS)
    db.execute("CREATE TABLE results (cache_key TEXT PRIMARY KEY, task_id TEXT NOT NULL,"
               " result TEXT NOT NULL, created_at REAL NOT NULL)")
    insert = ("INSERT INTO tasks (task_id, file_name, file_size, file_hash, cache_key, output_format,"
              " chunked, chunk_size, total_chunks, state, progress, created_at, updated_at, queued_at,"
              " finished_at) VALUES (?, ?, ?, ?, ?, 'json', 0, 0, 0, ?, ?, 1, 1, 1, ?)")
    db.execute(insert, ("queued-1", "q.wav", len(audio), md5(audio), f"{md5(audio)}|fake||en|single",
                        "queued", 0, None))
    db.execute(insert, ("done-1", "d.wav", 4, md5(b"done"), old_key, "completed", 100, 2))
    old = {"text": "old", "segments": [], "speakers": [], "duration": 1.0}
    db.execute("INSERT INTO results VALUES (?, 'done-1', ?, 2)", (old_key, json.dumps(old)))
    db.commit()
    db.close()
    hub = make_hub({"server": {"state_dir": str(tmp_path / "state")}, "engines": {"speaker": "none"},
                    "protocols": {"file_transcription": {"diarization": False}}},
                   only=["file_transcription"], fake_engines=True)
    async with running_server(hub) as server:
        c = await RawClient.connect(url(server))
        status = await c.ask(msg("task_status", task_id="queued-1"))
        assert status["data"]["status"] in ("queued", "running", "completed")
        done, _ = await c.until("task_complete")
        assert done["data"]["task_id"] == "queued-1" and done["data"]["result"]["text"].startswith("w1")
        row = service_of(server).store.get("queued-1")
        assert row is not None and row.sha256 is not None and row.cache_key.startswith("sha256:")
        status = await c.ask(msg("task_status", task_id="done-1"))
        assert status["data"]["status"] == "completed"
        assert (await c.recv())["data"]["result"]["text"] == "old"
        fresh = await c.ask(msg("upload_request", file_name="d.wav", file_size=4, file_hash=md5(b"done")))
        assert fresh["type"] == "upload_ready"
        await c.close()

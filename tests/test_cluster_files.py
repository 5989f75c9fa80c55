"""File transcription past one machine: a real redis-server, HAProxy and three ``asrhub serve``
instances on loopback sharing file tasks (Redis Streams queue, Redis task store, a shared
spool directory).

- the seed's client (funasr_client.py, unchanged) uploads through HAProxy to instance A, which
  transcribes nothing (``concurrency = 0``), so the task runs on B or C; ``kill -9`` of that
  one → the other re-claims it (XAUTOCLAIM after ``claim_timeout_s``) and the client gets
  exactly one ``task_complete`` with the right text;
- a second seed client asking for the same file (by hash) gets the shared cache, and another
  instance answers ``task_status`` for the task;
- a client that uploaded through A and reconnects to C follows its task there (task_status,
  progress, one task_complete);
- SIGTERM of the instance running a task: it gives the task back at once, the other one
  completes it;
- Redis stopped mid-task: no instance crashes, requests that need Redis get ``server_busy``
  saying so, and once Redis is back the task completes (once) and uploads work again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from asrhub.testing import make_hub, wer

from .cluster_harness import (
    HAVE_CLUSTER_TOOLS,
    NO_CLUSTER_TOOLS,
    HAProxy,
    Instance,
    Redis,
    http_json,
    wait_until,
)
from .plugins.file_transcription.conftest import (
    OTHER,
    READER,
    RawClient,
    data_msg,
    joined,
    load_doc_client,
    msg,
    reference,
    upload_request,
    write_wav,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(not HAVE_CLUSTER_TOOLS, reason=NO_CLUSTER_TOOLS)]

MAX_WER = 0.25
CLAIM_TIMEOUT_S = 4
PREFIX = "asrhub:file:"


def file_instance(tmp, name: str, redis_url: str, spool, concurrency: int) -> Instance:
    disabled = [n for n in make_hub({}).protocols if n != "file_transcription"]
    return Instance(tmp, name, redis_url, disabled, protocol="file_transcription",
                    settings=[f'shared_spool_dir = "{spool}"', f"claim_timeout_s = {CLAIM_TIMEOUT_S}",
                              "queue_update_s = 1", "diarization = false",
                              f"concurrency = {concurrency}"],
                    sections=["[engines]", 'asr = "whisper"', 'vad = "silero"',
                              "[engines.whisper]", 'model = "tiny.en"', 'language = "en"'])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster_files")
    spool = tmp / "spool"  # one host: a common directory stands in for the shared filesystem
    redis = Redis(tmp)
    redis.start()
    instances = [file_instance(tmp, "a", redis.url, spool, 0),
                 file_instance(tmp, "b", redis.url, spool, 1),
                 file_instance(tmp, "c", redis.url, spool, 1)]
    proxy = HAProxy(tmp, [i.port for i in instances], name="file_transcription")
    try:
        for inst in instances:
            inst.start()
        for inst in instances:
            wait_until(inst.ready, 240, f"instance {inst.name}: {inst.log()}")
        proxy.start()
        yield redis, instances, proxy, tmp
    finally:
        proxy.stop()
        for inst in instances:
            inst.stop()
        redis.stop()


def task_state(redis: Redis, task_id: str) -> dict[str, str]:
    raw = redis.client().hgetall(PREFIX + "task:" + task_id)
    return {k.decode(): v.decode() for k, v in raw.items()}


def running_on(redis: Redis) -> tuple[str, str] | None:
    """(task id, instance) of the task a worker holds, from the stream's pending entries."""
    client = redis.client()
    for entry in client.xpending_range(PREFIX + "queue", "file-workers", "-", "+", 10):
        fields = client.xrange(PREFIX + "queue", entry["message_id"], entry["message_id"])
        if fields:
            task_id = fields[0][1][b"task_id"].decode()
            return task_id, entry["consumer"].decode().split("/", 1)[0]
    return None


async def quiet_for(ws, seconds: float) -> list[dict]:
    """Every message that arrives within ``seconds`` (bounded: a wait for absence)."""
    seen: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return seen


async def test_kill_9_of_the_running_instance_completes_on_a_survivor_once(cluster):
    redis, (a, b, c), proxy, tmp = cluster
    names = [*READER, *READER]
    path = write_wav(tmp / "long.wav", joined(names, gap_s=0.5))
    module = load_doc_client()
    client = module.FunASRClient(f"ws://127.0.0.1:{proxy.port}")
    # HAProxy sends this connection to A (B and C drained for the moment, as an operator would).
    proxy.set_state(2, "drain")
    proxy.set_state(3, "drain")
    try:
        assert await client.connect()
    finally:
        proxy.set_state(2, "ready")
        proxy.set_state(3, "ready")
    job = asyncio.ensure_future(client.transcribe_file(path))
    try:
        victim = None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline:
            assert not job.done(), job.result()
            held = running_on(redis)
            if held is not None:
                task_id, owner = held
                state = task_state(redis, task_id)
                if state.get("state") == "running" and float(state.get("progress", 0)) > 0:
                    victim = {"b": b, "c": c}[owner]
                    break
            await asyncio.sleep(0.1)
        assert victim is not None, "the task never ran"
        survivor = c if victim is b else b
        victim.stop(signal.SIGKILL)
        assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
        result = await asyncio.wait_for(job, 300)
        extra = await quiet_for(client.websocket, 3 * 1.0 + 1)
    finally:
        if not job.done():
            job.cancel()
        await client.disconnect()
    assert wer(reference(*names), result["text"]) <= MAX_WER, result["text"]
    completes = [line for line in module.printed if line == "✓ 转录完成"]
    assert len(completes) == 1, module.printed
    assert not [m for m in extra if m.get("type") == "task_complete"], extra
    assert task_state(redis, task_id)["state"] == "completed"
    assert survivor.events("file_task_resumed"), survivor.log()
    assert a.alive() and survivor.alive()
    assert not a.events("file_task_resumed")  # A transcribes nothing
    # The client's upload went through A (HAProxy), the task ran elsewhere.
    assert any(e.get("task_id") == task_id for e in a.events("file_upload_started")), a.log()
    assert any(e.get("task_id") == task_id for e in survivor.events("file_task_completed"))
    # The second seed client asks for the same file (by hash): the shared cache answers, on
    # whichever instance HAProxy picks.
    again = load_doc_client()
    second = again.FunASRClient(f"ws://127.0.0.1:{proxy.port}")
    assert await second.connect()
    try:
        cached = await second.transcribe_file(path)
    finally:
        await second.disconnect()
    assert any("使用缓存结果" in line for line in again.printed), again.printed
    assert cached["text"] == result["text"]
    # Any instance answers task_status for the task (a client reconnecting elsewhere).
    for inst in (a, survivor):
        raw = await RawClient.connect(f"ws://127.0.0.1:{inst.port}")
        try:
            status = await raw.ask(msg("task_status", task_id=task_id))
            assert status["type"] == "task_status" and status["data"]["status"] == "completed", status
            done = await raw.recv()
            assert done["type"] == "task_complete" and done["data"]["result"]["text"] == result["text"]
        finally:
            await raw.close()
    victim.start()  # back for the next test
    wait_until(victim.ready, 240, f"instance {victim.name}: {victim.log()}")


async def test_a_client_reconnecting_to_another_instance_follows_its_task(cluster):
    redis, (a, b, c), proxy, tmp = cluster
    names = [*OTHER, *READER[:2]]
    data = write_wav(tmp / "follow.wav", joined(names, gap_s=0.8)).read_bytes()
    first = await RawClient.connect(f"ws://127.0.0.1:{a.port}")
    try:
        ready = await first.ask(upload_request(data, "follow.wav"))
        task_id = ready["data"]["task_id"]
        assert (await first.ask(data_msg(task_id, data)))["type"] == "upload_complete"
    finally:
        await first.close()
    again = await RawClient.connect(f"ws://127.0.0.1:{c.port}")
    try:
        status = await again.ask(msg("task_status", task_id=task_id))
        assert status["type"] == "task_status", status
        assert status["data"]["status"] in ("queued", "running", "completed"), status
        done, seen = await again.until("task_complete", timeout=300)
        assert done["data"]["task_id"] == task_id
        assert wer(reference(*names), done["data"]["result"]["text"]) <= MAX_WER
        assert all(m["data"].get("task_id") == task_id for m in seen if m["type"] != "task_status")
        extra = await quiet_for(again.ws, 3.0)
        assert not [m for m in extra if m.get("type") == "task_complete"], extra
    finally:
        await again.close()


async def test_sigterm_of_the_running_instance_gives_the_task_back(cluster):
    """A stopping instance puts its running task back on the queue at once (no wait for the
    claim timeout); the other one transcribes it; the client gets one task_complete."""
    redis, (a, b, c), proxy, tmp = cluster
    names = [*READER[1:4], *READER[1:4]]
    data = write_wav(tmp / "stop.wav", joined(names, gap_s=0.6)).read_bytes()
    client = await RawClient.connect(f"ws://127.0.0.1:{a.port}")
    try:
        ready = await client.ask(upload_request(data, "stop.wav"))
        task_id = ready["data"]["task_id"]
        assert (await client.ask(data_msg(task_id, data)))["type"] == "upload_complete"
        deadline = time.monotonic() + 240
        held = None
        while time.monotonic() < deadline:
            held = running_on(redis)
            if held is not None and held[0] == task_id and \
                    float(task_state(redis, task_id).get("progress", 0)) > 0:
                break
            await asyncio.sleep(0.1)
        assert held is not None and held[0] == task_id, "the task never ran"
        stopping = {"b": b, "c": c}[held[1]]
        other = c if stopping is b else b
        stopping.stop()  # SIGTERM
        assert stopping.proc is not None and stopping.proc.returncode == 0, stopping.log()
        assert any(e.get("task_id") == task_id for e in stopping.events("file_task_given_back"))
        done, _ = await client.until("task_complete", timeout=300)
        assert wer(reference(*names), done["data"]["result"]["text"]) <= MAX_WER
        extra = await quiet_for(client.ws, 3.0)
        assert not [m for m in extra if m.get("type") == "task_complete"], extra
        assert any(e.get("task_id") == task_id for e in other.events("file_task_completed"))
        assert not any(e.get("task_id") == task_id for e in other.events("file_task_reclaimed"))
    finally:
        await client.close()
    stopping.start()
    wait_until(stopping.ready, 240, f"instance {stopping.name}: {stopping.log()}")


async def test_redis_restarted_mid_task_no_crash_clear_errors_recovery(cluster):
    redis, instances, proxy, tmp = cluster
    a = instances[0]
    names = [*READER[:3], *OTHER]
    data = write_wav(tmp / "outage.wav", joined(names, gap_s=0.7)).read_bytes()
    client = await RawClient.connect(f"ws://127.0.0.1:{proxy.port}")
    other = await RawClient.connect(f"ws://127.0.0.1:{a.port}")
    try:
        ready = await client.ask(upload_request(data, "outage.wav"))
        assert ready["type"] == "upload_ready", ready
        task_id = ready["data"]["task_id"]
        assert (await client.ask(data_msg(task_id, data)))["type"] == "upload_complete"
        wait_until(lambda: task_state(redis, task_id).get("state") == "running", 120, "the task to run")
        redis.stop()
        for inst in instances:
            wait_until(lambda inst=inst: http_json(f"http://127.0.0.1:{inst.port}/health")["cluster"]["redis"]
                       == "unreachable", 15, f"{inst.name}'s health to report redis unreachable")
        # Requests that need the shared store: the protocol's own error, saying why.
        other_file = write_wav(tmp / "other.wav", joined([READER[4]])).read_bytes()
        refused = await other.ask(upload_request(other_file, "other.wav"))
        assert refused["type"] == "error" and refused["data"]["error"] == "server_busy", refused
        assert "redis" in refused["data"]["message"].lower(), refused
        status = await other.ask(msg("task_status", task_id=task_id))
        assert status["type"] == "error" and status["data"]["error"] == "server_busy", status
        for inst in instances:
            assert inst.alive(), inst.log()  # nobody crashed
        # The instance running the task finishes transcribing without Redis and keeps the result.
        wait_until(lambda: any(e.get("task_id") == task_id for inst in instances
                               for e in inst.events("file_result_unsaved")), 240,
                   "the running instance to hold its result")
        redis.start()  # same port, same append-only file: the queue and the task are still there
        for inst in instances:
            wait_until(lambda inst=inst: http_json(f"http://127.0.0.1:{inst.port}/health")["cluster"]["redis"]
                       == "ok", 15, f"{inst.name}'s health to report redis back")
        done, _ = await client.until("task_complete", timeout=300)
        assert done["data"]["task_id"] == task_id
        assert wer(reference(*names), done["data"]["result"]["text"]) <= MAX_WER
        extra = await quiet_for(client.ws, 4.0)
        assert not [m for m in extra if m.get("type") == "task_complete"], extra
        # Uploads work again, on the connection that saw the outage.
        ready = await other.ask(upload_request(other_file, "other.wav"))
        assert ready["type"] == "upload_ready", ready
        assert (await other.ask(data_msg(ready["data"]["task_id"], other_file)))["type"] == "upload_complete"
        finished, _ = await other.until("task_complete", timeout=300)
        assert wer(reference(READER[4]), finished["data"]["result"]["text"]) <= MAX_WER
    finally:
        await client.close()
        await other.close()
    for inst in instances:
        assert inst.alive(), inst.log()

"""The cluster's task store (:class:`RedisTaskStore`) against a real redis-server on loopback,
and the choice of service at setup (a single box keeps SQLite, even with ``redis_url`` set)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from asrhub.cluster import Cluster
from asrhub.config import ClusterConfig
from asrhub.testing import free_port, make_hub
from asrhub_plugins.file_transcription.handler import make_service
from asrhub_plugins.file_transcription.service import FileService
from asrhub_plugins.file_transcription.settings import FileTranscriptionSettings
from asrhub_plugins.file_transcription.store_redis import RedisTaskStore, StoreUnavailable

needs_redis = pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server not installed")


@pytest.fixture
def redis_port(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    for _ in range(100):
        try:
            if redis.Redis(port=port).ping():
                break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def new_task(store: RedisTaskStore, task_id: str, *, md5: str = "a" * 32, size: int = 100,
             client: str = "peer1", scope: str = "") -> None:
    store.create_task(task_id=task_id, file_name="x.wav", file_size=size, file_hash=md5,
                      output_format="json", chunked=True, chunk_size=40, total_chunks=3,
                      scope=scope, client=client)


@needs_redis
def test_tasks_indexes_and_finish_once(redis_port, tmp_path):
    port, _ = redis_port
    cluster = Cluster(ClusterConfig(redis_url=f"redis://127.0.0.1:{port}/0", instance_id="t"))
    store = RedisTaskStore(cluster, tmp_path / "spool")
    new_task(store, "t1")
    task = store.get("t1")
    assert task is not None and task.state == "uploading" and task.chunked and task.duration is None
    assert store.count_pending() == 1 and store.pending_of("peer1") == (1, 100)
    assert store.reserved_bytes() == 100
    store.record_chunk("t1", 0, 40, "b" * 32)
    assert store.received_chunks("t1") == [0] and store.chunk_md5("t1", 0) == "b" * 32
    assert store.reserved_bytes() == 60
    assert store.find_unfinished("", "a" * 32, 100).task_id == "t1"
    assert store.find_unfinished("other-scope", "a" * 32, 100) is None
    store.update("t1", state="queued", queued_at=time.time(), duration=5.0, sha256="f" * 64,
                 cache_key="k1")
    new_task(store, "t2", md5="c" * 32)
    store.update("t2", state="queued", queued_at=time.time() + 1)
    assert store.queued_ahead("t1") == [] and store.queued_ahead("t2") == ["t1"]
    assert [t.task_id for t in store.tasks_in("queued")] == ["t1", "t2"]
    store.update("t1", state="running", started_at=time.time(), attempts=1)
    assert [t.task_id for t in store.running_tasks()] == ["t1"]
    assert store.queued_ahead("t2") == [] and store.pending_of("peer1") == (1, 100)
    result = {"text": "hello", "segments": [], "speakers": [], "duration": 5.0}
    assert store.finish("t1", "k1", result, 5.0) is True
    # A second instance that ran the same task (re-claimed) does not complete it again.
    assert store.finish("t1", "k1", {**result, "text": "other"}, 5.0) is False
    done = store.get("t1")
    assert done is not None and done.state == "completed" and done.progress == 100.0
    assert store.get_result("k1")[1]["text"] == "hello"
    assert store.shortcut_keys("", "a" * 32, 100) == {"k1"}
    assert store.shortcut_keys("", "a" * 32, 101) == set()
    assert store.find_unfinished("", "a" * 32, 100) is None
    assert store.running_tasks() == [] and store.received_chunks("t1") == []
    store.set_meta("rtf", "0.12")
    assert store.get_meta("rtf") == "0.12"
    store.update("t2", state="failed", error="{}")
    assert store.count_pending() == 0 and store.queued_ahead("t2") is None
    new_task(store, "t3")
    assert [t.task_id for t in store.stale_uploads(time.time() + 1)] == ["t3"]
    (store.spool_dir("t3")).mkdir()
    store.delete_task("t3")
    assert store.get("t3") is None and store.count_pending() == 0 and not store.spool_dir("t3").exists()


@needs_redis
def test_redis_away_is_server_busy_saying_so(redis_port, tmp_path):
    port, proc = redis_port
    cluster = Cluster(ClusterConfig(redis_url=f"redis://127.0.0.1:{port}/0", instance_id="t"))
    store = RedisTaskStore(cluster, tmp_path / "spool")
    new_task(store, "t1")
    proc.terminate()
    proc.wait(10)
    with pytest.raises(StoreUnavailable) as caught:
        store.get("t1")
    assert caught.value.code == "server_busy" and "Redis" in caught.value.message
    assert not caught.value.fatal


def test_single_box_keeps_sqlite_even_with_redis_url():
    hub = make_hub({"cluster": {"redis_url": "redis://127.0.0.1:1/0"}}, only=["file_transcription"])
    assert hub.cluster is not None
    service = make_service(hub, FileTranscriptionSettings())
    assert type(service) is FileService  # no shared_spool_dir: tasks stay in this instance
    alone = make_hub({}, only=["file_transcription"])
    zero = make_service(alone, FileTranscriptionSettings(concurrency=0))
    assert zero.settings.concurrency == 1  # 0 means "no workers here": only in a cluster


def test_cluster_service_chosen_with_shared_spool(tmp_path):
    from asrhub_plugins.file_transcription.cluster import ClusterFileService

    hub = make_hub({"cluster": {"redis_url": "redis://127.0.0.1:1/0"}}, only=["file_transcription"])
    service = make_service(hub, FileTranscriptionSettings(shared_spool_dir=str(tmp_path)))
    assert isinstance(service, ClusterFileService) and service.root == tmp_path


def test_settings_validation():
    FileTranscriptionSettings(concurrency=0).validate()
    with pytest.raises(ValueError):
        FileTranscriptionSettings(concurrency=-1).validate()
    with pytest.raises(ValueError):
        FileTranscriptionSettings(claim_timeout_s=0.5).validate()


@needs_redis
async def test_one_instance_at_a_time_finishes_an_upload(redis_port, tmp_path):
    """Two instances (services sharing one Redis) holding connections of the same upload
    verify and queue it one after the other (a lock in Redis, not only the local one)."""
    import asyncio

    from asrhub_plugins.file_transcription.cluster import ClusterFileService

    port, _ = redis_port
    hub = make_hub({"cluster": {"redis_url": f"redis://127.0.0.1:{port}/0"}}, only=["file_transcription"])
    settings = FileTranscriptionSettings(shared_spool_dir=str(tmp_path))
    first, second = ClusterFileService(hub, settings), ClusterFileService(hub, settings)
    order: list[str] = []

    async def hold(service: ClusterFileService, name: str) -> None:
        async with service._finishing("t1"):
            order.append(f"{name}+")
            await asyncio.sleep(0.3)
            order.append(f"{name}-")

    await asyncio.gather(hold(first, "a"), hold(second, "b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"]), order
    import redis

    assert redis.Redis(port=port).get("asrhub:file:lock:t1") is None  # released

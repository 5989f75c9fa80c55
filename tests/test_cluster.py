"""Past one machine: a real redis-server, a real HAProxy (Debian's, config from
``asrhub haproxy-config``'s generator) and three ``asrhub serve`` instances on loopback.

- a voiceprint registered through instance A is listed and verified by instance C (the Redis
  voiceprint store), also through HAProxy;
- HAProxy's /health checks take a killed instance out; connections through it keep working;
- Redis stopped mid-run: no crash, /health says so, registration fails with the protocol's own
  error; Redis back: registration works again.
"""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest
import soundfile as sf

from asrhub.testing import make_hub, testdata_dir

from .cluster_harness import (
    HAVE_CLUSTER_TOOLS,
    NO_CLUSTER_TOOLS,
    HAProxy,
    Instance,
    Redis,
    http_json,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(not HAVE_CLUSTER_TOOLS, reason=NO_CLUSTER_TOOLS)]

ENROLL = "zh/srdata_enroll_fangjun-sr-2.wav"  # 5.2 s: registration needs >= 3 s
SAME = "zh/srdata_test_fangjun-test-sr-1.wav"


def pcm16(name: str) -> bytes:
    audio, rate = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    assert rate == 16000
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def vad_session(port: int):
    import aiohttp

    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/")
    return session, ws


async def next_of(ws, *types: str, timeout: float = 60.0) -> dict:
    """The next message of one of ``types`` (errors always returned)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive_json(), max(0.1, deadline - time.monotonic()))
        if msg.get("type") in types or msg.get("type") == "error":
            return msg


async def register(port: int, user_id: str, audio: bytes) -> dict:
    session, ws = await vad_session(port)
    try:
        await ws.send_json({"command": "speaker_register_start", "user_id": user_id})
        started = await next_of(ws, "speaker_register_progress")
        if started.get("type") == "error":
            return started
        for i in range(0, len(audio), 6400):
            await ws.send_bytes(audio[i:i + 6400])
        await ws.send_json({"command": "speaker_register_end"})
        return await next_of(ws, "speaker_register_result")
    finally:
        await ws.close()
        await session.close()


async def listed(port: int) -> list[str]:
    session, ws = await vad_session(port)
    try:
        await ws.send_json({"command": "speaker_list"})
        reply = await next_of(ws, "speaker_list")
        return [s["user_id"] for s in reply["speakers"]]
    finally:
        await ws.close()
        await session.close()


async def verify(port: int, user_id: str, audio: bytes) -> dict:
    session, ws = await vad_session(port)
    try:
        await ws.send_json({"command": "speaker_verify_enable", "user_id": user_id, "required": False})
        assert (await next_of(ws, "speaker_verify_enabled"))["type"] == "speaker_verify_enabled"
        silence = b"\0\0" * 16000
        for chunk in (audio + silence,):
            for i in range(0, len(chunk), 6400):
                await ws.send_bytes(chunk[i:i + 6400])
                await asyncio.sleep(0.01)
        return await next_of(ws, "speaker_verify_result", timeout=120)
    finally:
        await ws.close()
        await session.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    redis = Redis(tmp)
    redis.start()
    disabled = [n for n in make_hub({}).protocols if n != "vad_stream"]
    instances = [Instance(tmp, name, redis.url, disabled) for name in ("a", "b", "c")]
    proxy = HAProxy(tmp, [i.port for i in instances])
    try:
        for inst in instances:
            inst.start()
        for inst in instances:
            wait_until(inst.ready, 240, f"instance {inst.name}: {inst.log()}")
        proxy.start()
        yield redis, instances, proxy
    finally:
        proxy.stop()
        for inst in instances:
            inst.stop()
        redis.stop()


async def test_voiceprint_registered_on_a_is_recognised_on_c(cluster):
    redis, (a, _b, c), proxy = cluster
    result = await register(a.port, "fangjun", pcm16(ENROLL))
    assert result.get("success") is True, result
    assert "fangjun" in await listed(c.port)
    assert "fangjun" in await listed(proxy.port)  # whichever instance HAProxy picks
    verdict = await verify(c.port, "fangjun", pcm16(SAME))
    assert verdict["type"] == "speaker_verify_result" and verdict["success"] is True, verdict
    health = http_json(f"http://127.0.0.1:{c.port}/health")
    assert health["cluster"] == {"redis": "ok", "instance": "c"}


async def test_redis_down_is_a_clear_error_and_recovers(cluster):
    redis, (a, b, c), proxy = cluster
    redis.stop()
    wait_until(lambda: http_json(f"http://127.0.0.1:{a.port}/health")["cluster"]["redis"]
               == "unreachable", 15, "health to report redis unreachable")
    failed = await register(a.port, "during_outage", pcm16(ENROLL))
    assert failed["type"] == "error" and "redis" in failed["message"].lower(), failed
    for inst in (a, b, c):
        assert inst.proc is not None and inst.proc.poll() is None  # nobody crashed
    redis.start()  # same port, same data directory (append-only file)
    wait_until(lambda: http_json(f"http://127.0.0.1:{a.port}/health")["cluster"]["redis"] == "ok",
               15, "health to report redis back")
    result = await register(b.port, "after_outage", pcm16(ENROLL))
    assert result.get("success") is True, result
    assert {"fangjun", "after_outage"} <= set(await listed(c.port))


async def test_haproxy_routes_around_a_killed_instance(cluster):
    _redis, (_a, b, _c), proxy = cluster
    b.stop(signal.SIGKILL)
    await asyncio.sleep(1.5)  # > fall 2 × inter 300 ms
    for _ in range(6):
        assert "fangjun" in await listed(proxy.port)

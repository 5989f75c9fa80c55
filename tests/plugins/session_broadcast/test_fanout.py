"""The fan-out across instances (``fanout.py`` and the sessions in cluster mode) against a real
redis-server on loopback: two "instances" are two registries in this process, each with its own
:class:`Bus` (its own Redis clients and origin), sharing one Redis. Engines are the hub's
deterministic fake VAD/ASR (what is tested is the fan-out; real models on real audio run in
tests/test_cluster_broadcast.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from asrhub.cluster import Cluster
from asrhub.config import ClusterConfig
from asrhub.protocol import ProtocolError
from asrhub.testing import free_port, make_hub
from asrhub_plugins.session_broadcast.fanout import Bus, FanoutUnavailable, Remote
from asrhub_plugins.session_broadcast.messages import ErrorCode
from asrhub_plugins.session_broadcast.session import SessionRegistry, State
from asrhub_plugins.session_broadcast.settings import BroadcastSettings

from .conftest import ListChannel, context

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.skipif(not shutil.which("redis-server"),
                                 reason="redis-server (make system-deps) not installed")]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory, cluster_harness):
    server = cluster_harness.Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub():
    hub = make_hub({"protocols": {"session_broadcast": {"identify_speakers": False}}},
                   only=["session_broadcast"], fake_engines=True)
    hub.make_executor()
    yield hub
    await hub.executor.shutdown()
    hub.unload_engines()


class Instance:
    """One instance's session-broadcast state: a registry with its own Cluster and Bus."""

    def __init__(self, hub: Any, url: str, name: str, **bus: float) -> None:
        self.cluster = Cluster(ClusterConfig(redis_url=url, instance_id=name, key_prefix="t:"))
        self.bus = Bus(self.cluster, **bus)
        settings = BroadcastSettings(identify_speakers=False, max_segment_s=5.0)
        self.registry = SessionRegistry(context(hub, settings), self.bus)

    def channel(self, **kwargs: Any) -> ListChannel:
        return ListChannel(self.registry.ctx, **kwargs)

    async def close(self) -> None:
        await self.registry.shutdown()
        await self.cluster.close()


@pytest_asyncio.fixture(loop_scope="module")
async def instances(hub, redis_server):
    made = [Instance(hub, redis_server.url, name) for name in ("a", "b")]
    yield made
    for inst in made:
        await inst.close()


def speech(seconds: float, seed: int) -> np.ndarray:
    """Loud noise: the fake VAD's speech (one fake word per 0.5 s)."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def pause(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.float32)


async def until(condition, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.02)):  # bounded
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def feed(session, audio: np.ndarray, frame: int = 3200) -> None:
    for i in range(0, len(audio), frame):
        session.feed(audio[i:i + frame])
        await asyncio.sleep(0)


async def subscribers(inst: Instance, session_id: str) -> int:
    counts = await inst.cluster.aio().pubsub_numsub(inst.bus.channel(session_id))
    return int(counts[0][1])


# ----------------------------------------------------------------------------- the bus itself


async def test_results_in_order_once_per_subscriber_and_the_lock(instances):
    a, b = instances
    owner = await a.bus.acquire("bus-1")
    assert owner is not None
    assert await b.bus.acquire("bus-1") is None  # one sender per session, on any instance
    got: list[Remote] = []
    lost: list[str] = []
    feed_b = await b.bus.subscribe("bus-1", got.append, lost.append)
    own: list[Remote] = []
    feed_a = await a.bus.subscribe("bus-1", own.append, lost.append)
    owner.start(lost.append)
    for i in range(50):
        owner.publish({"asr": f"r{i}", "spk": {}})
    await owner.finish(1000, "session ended")
    await until(lambda: len(got) == 52)
    assert got[0].kind == "start" and got[0].owner == owner.token
    assert [r.body for r in got[1:51]] == [{"asr": f"r{i}", "spk": {}} for i in range(50)]
    assert [r.seq for r in got] == list(range(1, 53))
    assert got[-1].kind == "end" and got[-1].body == {"code": 1000, "reason": "session ended"}
    assert own == [] and lost == []  # an instance skips its own messages
    # the lock is free again: the next sender may be anywhere
    again = await b.bus.acquire("bus-1")
    assert again is not None
    await again.release()
    await feed_a.close()
    await feed_b.close()


async def test_duplicates_and_foreign_messages_are_dropped(instances):
    a, b = instances
    got: list[Remote] = []
    feed = await b.bus.subscribe("bus-2", got.append, lambda why: None)
    client = a.cluster.aio()
    message = {"o": f"{a.bus.origin}/x", "n": 1, "t": "result", "m": {"asr": "once"}}
    for payload in (json.dumps(message), json.dumps(message), "not json", json.dumps({"o": 1})):
        await client.publish(a.bus.channel("bus-2"), payload)
    await client.publish(a.bus.channel("bus-2"), json.dumps({**message, "n": 2, "m": {"asr": "twice"}}))
    await until(lambda: len(got) == 2)
    assert [r.body["asr"] for r in got] == ["once", "twice"]
    await feed.close()


async def test_the_lock_is_refreshed_while_the_sender_lives(hub, redis_server):
    a = Instance(hub, redis_server.url, "a", owner_ttl_s=1.0, refresh_s=0.2)
    b = Instance(hub, redis_server.url, "b")
    try:
        owner = await a.bus.acquire("bus-3")
        assert owner is not None
        owner.start(lambda why: None)
        await asyncio.sleep(2.5)  # longer than the expiry: the refresh kept it
        assert await b.bus.acquire("bus-3") is None
        await owner.release()
        assert await b.cluster.aio().exists(b.bus.owner_key("bus-3")) == 0
    finally:
        await a.close()
        await b.close()


async def test_a_sender_instance_that_dies_ends_the_session_elsewhere(hub, redis_server):
    """No end is ever published (the process died): once its lock expires, the receivers on
    other instances are closed (1001) instead of waiting forever."""
    a = Instance(hub, redis_server.url, "a", owner_ttl_s=1.0, refresh_s=0.2)
    b = Instance(hub, redis_server.url, "b", owner_ttl_s=1.0)
    try:
        receiver = b.channel()
        session = await b.registry.join_receiver("dies", receiver)
        owner = await a.bus.acquire("dies")
        assert owner is not None
        owner.start(lambda why: None)
        owner.publish({"asr": "last words", "spk": {}})
        await until(lambda: len(receiver.results) == 1)
        for task in owner._tasks:  # the process is gone: no more refreshes, no end, no release
            task.cancel()
        await until(lambda: receiver.close_code is not None)
        assert (receiver.close_code, receiver.close_reason) == (
            1001, "session ended: the sender's instance went away")
        assert session.state is State.CLOSED and b.registry.sessions == {}
        assert receiver.results == [{"asr": "last words", "spk": {}}]
    finally:
        await a.close()
        await b.close()


# ----------------------------------------------------------------------------- sessions


async def test_a_sender_here_receivers_there(instances):
    """Receivers on B (one before the sender, one late, one stuck) get exactly what A's sender
    gets, through one subscription of B; A's local receiver too; everybody closed normally."""
    a, b = instances
    early = b.channel()
    early_session = await b.registry.join_receiver("s1", early)
    stuck = b.channel(stuck=True)
    await b.registry.join_receiver("s1", stuck)
    assert await subscribers(b, "s1") == 1  # one subscription for B's receivers
    local = a.channel()
    await a.registry.join_receiver("s1", local)
    sender = a.channel()
    session = await a.registry.join_sender("s1", sender)
    assert session.state is State.LIVE and session._feed is None  # A holds the sender: no feed
    # a second sender, on either instance, is refused
    for inst in (a, b):
        with pytest.raises(ProtocolError) as err:
            await inst.registry.join_sender("s1", inst.channel())
        assert err.value.code is ErrorCode.SENDER_EXISTS and "already has a sender" in err.value.message

    await feed(session, np.concatenate([pause(0.5), speech(1.6, 1), pause(1.0)]))
    await until(lambda: len(early.results) == 1)
    late = b.channel()
    assert await b.registry.join_receiver("s1", late) is early_session
    await feed(session, np.concatenate([speech(2.1, 2), pause(1.0), speech(1.1, 3), pause(0.6)]))
    session.end_of_audio("sender sent close")
    await asyncio.wait_for(session.wait_closed(), 30)
    await until(lambda: early.close_code is not None and late.close_code is not None)

    assert [r["asr"] for r in sender.results] == ["w1 w2 w3", "w1 w2 w3 w4", "w1 w2"]
    assert early.results == sender.results == local.results
    assert late.results == sender.results[1:]
    assert sender.messages[-1]["type"] == "closed" and sender.messages[-1]["results"] == 3
    for peer in (early, late, local):
        assert (peer.close_code, peer.close_reason) == (1000, "session ended")
    assert stuck.close_code == 1008 and stuck.messages == []  # dropped; nobody slowed
    assert early_session.state is State.CLOSED and "s1" not in b.registry.sessions
    await until(lambda: "s1" not in a.registry.sessions)
    assert await subscribers(b, "s1") == 0
    # the id is free again, for a sender on B this time
    again = b.channel()
    second = await b.registry.join_sender("s1", again)
    second.end_of_audio("sender sent close")
    await asyncio.wait_for(second.wait_closed(), 10)
    assert again.messages[-1]["type"] == "closed"


async def test_receivers_leaving_drop_the_subscription(instances):
    _a, b = instances
    first, second = b.channel(), b.channel()
    session = await b.registry.join_receiver("s2", first)
    await b.registry.join_receiver("s2", second)
    assert await subscribers(b, "s2") == 1
    session.remove_receiver(first)
    assert await subscribers(b, "s2") == 1
    session.remove_receiver(second)
    assert session.state is State.CLOSED
    await until(lambda: session._feed is None)
    for _ in range(100):  # the unsubscribe is asynchronous
        if await subscribers(b, "s2") == 0:
            break
        await asyncio.sleep(0.05)
    assert await subscribers(b, "s2") == 0


async def test_the_sender_instance_shutting_down_closes_remote_receivers_with_1001(hub, redis_server):
    a = Instance(hub, redis_server.url, "a")
    b = Instance(hub, redis_server.url, "b")
    try:
        remote, sender = b.channel(), a.channel()
        await b.registry.join_receiver("s6", remote)
        session = await a.registry.join_sender("s6", sender)
        await feed(session, np.concatenate([speech(1.1, 6), pause(1.0)]))
        await until(lambda: len(remote.results) == 1)
        await a.registry.shutdown()  # what the server does on SIGTERM, after its drain
        await until(lambda: remote.close_code is not None)
        assert (remote.close_code, remote.close_reason) == (1001, "server shutting down")
        assert remote.results == sender.results
        assert await a.cluster.aio().exists(a.bus.owner_key("s6")) == 0  # the lock was freed
    finally:
        await a.close()
        await b.close()


async def test_redis_lost_mid_session_then_back(hub, redis_server):
    """Redis stops: B's receivers and A's sender and receiver get cluster_unavailable and 1013;
    newcomers are refused the same way; Redis back: a new session works."""
    a = Instance(hub, redis_server.url, "a", owner_ttl_s=3.0, refresh_s=0.3)
    b = Instance(hub, redis_server.url, "b")
    try:
        remote, local, sender = b.channel(), a.channel(), a.channel()
        await b.registry.join_receiver("s3", remote)
        await a.registry.join_receiver("s3", local)
        session = await a.registry.join_sender("s3", sender)
        await feed(session, np.concatenate([speech(1.6, 4), pause(1.0)]))
        await until(lambda: len(remote.results) == 1)

        redis_server.stop()
        await until(lambda: None not in (remote.close_code, local.close_code, sender.close_code))
        for peer in (remote, local, sender):
            errors = [m for m in peer.messages if m.get("type") == "error"]
            assert errors and errors[-1]["code"] == "cluster_unavailable", peer.messages
            assert "Redis unreachable" in errors[-1]["message"]
            assert peer.close_code == 1013
        assert session.state is State.CLOSED
        for join in (b.registry.join_receiver, a.registry.join_sender):
            with pytest.raises(ProtocolError) as err:
                await join("s4", a.channel())
            assert err.value.code is ErrorCode.CLUSTER_UNAVAILABLE and err.value.close_code == 1013
        assert a.registry.sessions == {} and b.registry.sessions == {}  # nothing left behind

        redis_server.start()
        remote, sender = b.channel(), a.channel()
        for _ in range(100):  # the clients reconnect by themselves once Redis answers
            try:
                await b.registry.join_receiver("s5", remote)
                break
            except ProtocolError:
                await asyncio.sleep(0.1)
        session = await a.registry.join_sender("s5", sender)
        await feed(session, np.concatenate([speech(1.1, 5), pause(1.0)]))
        session.end_of_audio("sender sent close")
        await asyncio.wait_for(session.wait_closed(), 20)
        await until(lambda: remote.close_code is not None)
        assert remote.results == sender.results and len(remote.results) == 1
        assert remote.close_code == 1000
    finally:
        await a.close()
        await b.close()


async def test_bus_refuses_cleanly_when_redis_is_not_there():
    cluster = Cluster(ClusterConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0", instance_id="x"))
    bus = Bus(cluster)
    try:
        with pytest.raises(FanoutUnavailable):
            await bus.acquire("s")
        with pytest.raises(FanoutUnavailable):
            await bus.subscribe("s", lambda r: None, lambda why: None)
    finally:
        await cluster.close()

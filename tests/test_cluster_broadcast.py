"""Session broadcast past one machine: a real redis-server and three ``asrhub serve`` instances
on loopback (session_broadcast only, Whisper tiny.en), the seed's own Python clients.

- the seed's sender on instance A, the seed's receivers on B and C: identical results, the
  right text (LibriVox clips with human references); a receiver on B connected before the
  sender and one that joins late both work; a second sender on C is refused;
- Redis stopped mid-session: every client gets ``cluster_unavailable`` and a 1013 close, no
  instance crashes, newcomers are refused the same way; Redis back: sessions work again;
- through HAProxy (its configuration from ``asrhub.deploy``): receivers spread by leastconn
  over the three instances and the sender on any of them hear the same; ``asrhub
  haproxy-config`` balances the port by leastconn (no instance affinity).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import numpy as np
import pytest

from asrhub.testing import make_hub, manifest, wer

HERE = Path(__file__).resolve().parent


def _load(path: Path, name: str) -> ModuleType:
    """A helper module of the tests by path (tests/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load(HERE / "cluster_harness.py", "cluster_harness")
# The seed's clients and the recordings' helpers of the single-instance tests.
seed = _load(HERE / "plugins" / "session_broadcast" / "conftest.py", "session_broadcast_seed_helpers")

pytestmark = [pytest.mark.slow, pytest.mark.cluster,
              pytest.mark.skipif(not harness.HAVE_CLUSTER_TOOLS, reason=harness.NO_CLUSTER_TOOLS)]

PROTOCOL = "session_broadcast"
CLIPS = seed.CLIPS  # one LibriVox reader, human references (shared/testdata/NOTES.tsv)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("audio")
    rows = manifest()
    parts = [seed.quiet(0.5, 1)]
    for index, clip in enumerate(CLIPS):
        parts += [seed.load(clip), seed.quiet(1.2, index + 2)]
    short = [seed.quiet(0.3, 5), seed.load("en/pocketsphinx_goforward.wav"), seed.quiet(1.0, 6)]
    return {"three": seed.write_wav(folder / "three.wav", parts),
            "texts": [rows[c]["transcript"] for c in CLIPS],
            "short": np.concatenate(short),
            "short_text": rows["en/pocketsphinx_goforward.wav"]["transcript"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    redis = harness.Redis(tmp)
    redis.start()
    disabled = [n for n in make_hub({}).protocols if n != PROTOCOL]
    instances = [harness.Instance(tmp, name, redis.url, disabled, protocol=PROTOCOL,
                                  settings=["identify_speakers = false"],
                                  sections=["[engines.whisper]", 'model = "tiny.en"'])
                 for name in ("a", "b", "c")]
    proxy = harness.HAProxy(tmp, [i.port for i in instances], name=PROTOCOL)
    try:
        for inst in instances:
            inst.start()
        for inst in instances:
            harness.wait_until(inst.ready, 240, f"instance {inst.name}: {inst.log()}")
        proxy.start()
        yield redis, instances, proxy
    finally:
        proxy.stop()
        for inst in instances:
            inst.stop()
        redis.stop()


def url(inst, session_id: str, mode: str) -> str:
    return f"ws://127.0.0.1:{inst.port}/ws/asr/{session_id}?mode={mode}"


def subscriptions(redis, session_id: str) -> int:
    """Instances subscribed to the session's results (one per instance, however many receivers)."""
    return int(redis.client().pubsub_numsub(f"asrhub:broadcast:results:{session_id}")[0][1])


async def until(condition, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.05)):  # bounded
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def messages_until_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 60) -> list[Any]:
    """Every message until the server closes; the close last as ("close", code, reason)."""
    out: list[Any] = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.CLOSE:
            out.append(("close", msg.data, msg.extra))
            return out
        else:
            out.append(("close", ws.close_code, None))
            return out


def alive(instances) -> None:
    for inst in instances:
        assert inst.alive(), inst.log()


async def test_seed_sender_on_a_seed_receivers_on_b_and_c_get_identical_results(cluster, audio):
    redis, (a, b, c), _proxy = cluster
    session_id = str(uuid.uuid4())

    def receiver(inst):
        return seed.load_doc_client("doc_receiver", SESSION_ID=session_id,
                                    SERVER_URI=url(inst, "{session_id}", "receiver"))

    early = [receiver(b), receiver(c), receiver(a)]
    tasks = [asyncio.create_task(module.receive_results()) for module, _ in early]
    await until(lambda: subscriptions(redis, session_id) == 3)  # each instance waits for a sender
    sender, said = seed.load_doc_client("doc_sender", SESSION_ID=session_id, AUDIO_FILE=str(audio["three"]),
                                        SERVER_URI=url(a, "{session_id}", "sender"))
    sending = asyncio.create_task(sender.send_audio())
    await until(lambda: subscriptions(redis, session_id) == 2)  # A holds the sender: no feed

    # A late receiver on B, once the first result is out: it shares B's subscription.
    await until(lambda: seed.received_results(early[0][1]), 90)
    late, late_said = receiver(b)
    late_task = asyncio.create_task(late.receive_results())
    # While A holds the sender, a sender on C is refused like a second sender on one instance.
    async with aiohttp.ClientSession() as http:
        refused = await messages_until_closed(await http.ws_connect(url(c, session_id, "sender")))
    assert refused[0]["code"] == "sender_exists" and "already has a sender" in refused[0]["message"]
    assert refused[-1][:2] == ("close", 1008)

    await asyncio.wait_for(sending, 120)
    await asyncio.wait_for(asyncio.gather(*tasks, late_task), 120)
    alive(cluster[1])

    results = [seed.received_results(printed) for _, printed in early]
    on_b, on_c, on_a = results
    assert on_b == on_c == on_a, results  # identical, in the same order, on every instance
    texts = [r["asr"] for r in on_b]
    assert len(texts) == 3, texts
    for text, reference in zip(texts, audio["texts"], strict=True):
        assert wer(reference, text) < 0.35, (reference, text)
    assert all(set(r) == {"asr", "spk"} for r in on_b)
    for _, printed in early:  # the sender's end reached every receiver, on every instance
        assert printed[-1] == "连接已关闭: 1000 session ended", printed[-3:]
    late_results = seed.received_results(late_said)
    assert late_results and late_results == on_b[-len(late_results):] and len(late_results) < 3
    assert late_said[-1] == "连接已关闭: 1000 session ended"
    # the seed's sender ran to the end; the one message it reads after "close" is the first result
    assert not [line for line in said if line.startswith(("发生错误", "连接已关闭"))], said
    final = [line for line in said if line.startswith("收到服务器最终响应: ")]
    assert len(final) == 1 and json.loads(final[0].split(": ", 1)[1]) == on_b[0]
    await until(lambda: subscriptions(redis, session_id) == 0, 10)
    assert redis.client().exists(f"asrhub:broadcast:sender:{session_id}") == 0  # lock released


async def test_through_haproxy_clients_land_anywhere_and_hear_the_same(cluster, audio):
    """leastconn spreads three receivers over the three instances; the sender lands on one of
    them; every receiver gets the same result."""
    redis, _instances, proxy = cluster
    session_id = str(uuid.uuid4())
    via = f"ws://127.0.0.1:{proxy.port}/ws/asr/{session_id}?mode="
    pcm = audio["short"]
    async with aiohttp.ClientSession() as http:
        receivers = []
        for _ in range(3):
            receivers.append(await http.ws_connect(via + "receiver"))
        await until(lambda: subscriptions(redis, session_id) == 3)  # one on each instance
        sender = await http.ws_connect(via + "sender")
        for i in range(0, len(pcm), 1600):
            await sender.send_bytes(pcm[i:i + 1600].tobytes())
            await asyncio.sleep(0.01)
        await sender.send_str("close")
        sent, *heard = await asyncio.gather(messages_until_closed(sender),
                                            *(messages_until_closed(ws) for ws in receivers))
    assert heard[0] == heard[1] == heard[2], heard
    assert len(heard[0]) == 2 and heard[0][-1] == ("close", 1000, "session ended"), heard[0]
    assert wer(audio["short_text"], heard[0][0]["asr"]) < 0.35, heard[0]
    assert sent[0] == heard[0][0] and sent[1]["type"] == "closed"


def test_haproxy_config_balances_the_port_by_leastconn(cluster, capsys):
    from asrhub.cli import main

    _redis, (a, _b, _c), _proxy = cluster
    assert main(["haproxy-config", "--config", str(a.config), "--instances", "3"]) == 0
    config = capsys.readouterr().out
    backend = config[config.index(f"\nbackend {PROTOCOL}_instances"):].split("\n\n")[0]
    assert "balance leastconn" in backend and "/health" in backend


async def test_redis_stopped_mid_session_is_a_clear_error_then_recovers(cluster, audio):
    redis, (a, b, c), _proxy = cluster
    session_id = str(uuid.uuid4())
    pcm = audio["short"]
    async with aiohttp.ClientSession() as http:
        on_b = await http.ws_connect(url(b, session_id, "receiver"))
        on_c = await http.ws_connect(url(c, session_id, "receiver"))
        await until(lambda: subscriptions(redis, session_id) == 2)
        sender = await http.ws_connect(url(a, session_id, "sender"))
        first = asyncio.create_task(on_b.receive_json())
        frames = 0
        while not first.done():  # real time, the clip over and over, until B has a result
            chunk = pcm[(frames * 1600) % len(pcm):][:1600]
            await sender.send_bytes(chunk.tobytes())
            frames += 1
            assert frames < 1200, "no result on B after 2 minutes of audio"
            await asyncio.sleep(0.1)
        assert wer(audio["short_text"], first.result()["asr"]) < 0.35, first.result()

        redis.stop()
        heard_b, heard_c, sent = await asyncio.gather(
            messages_until_closed(on_b), messages_until_closed(on_c),
            _keep_sending_until_closed(sender, pcm))
        for heard in (heard_b, heard_c, sent):
            errors = [m for m in heard if isinstance(m, dict) and m.get("type") == "error"]
            assert errors and errors[-1]["code"] == "cluster_unavailable", heard
            assert "Redis unreachable" in errors[-1]["message"]
            assert heard[-1][:2] == ("close", 1013), heard
        alive(cluster[1])
        harness.wait_until(lambda: harness.http_json(f"http://127.0.0.1:{a.port}/health")["cluster"]
                           ["redis"] == "unreachable", 15, "health to report redis unreachable")
        # newcomers are told why, not left hanging
        for inst, mode in ((c, "receiver"), (b, "sender")):
            refused = await messages_until_closed(await http.ws_connect(url(inst, "during", mode)))
            assert refused[0]["code"] == "cluster_unavailable" and refused[-1][:2] == ("close", 1013)

        redis.start()
        harness.wait_until(lambda: all(harness.http_json(f"http://127.0.0.1:{i.port}/health")["cluster"]
                                       ["redis"] == "ok" for i in (a, b, c)), 20, "redis back")
        session_id = str(uuid.uuid4())
        receiver = await http.ws_connect(url(c, session_id, "receiver"))
        await until(lambda: subscriptions(redis, session_id) == 1, 20)
        sender = await http.ws_connect(url(b, session_id, "sender"))
        for i in range(0, len(pcm), 1600):
            await sender.send_bytes(pcm[i:i + 1600].tobytes())
        await sender.send_str("close")
        sent, heard = await asyncio.gather(messages_until_closed(sender), messages_until_closed(receiver))
    alive(cluster[1])
    assert heard[-1] == ("close", 1000, "session ended") and len(heard) == 2, heard
    assert wer(audio["short_text"], heard[0]["asr"]) < 0.35, heard
    assert sent[0] == heard[0] and sent[1]["type"] == "closed" and sent[-1][:2] == ("close", 1000)


async def _keep_sending_until_closed(ws: aiohttp.ClientWebSocketResponse, pcm: np.ndarray) -> list[Any]:
    """A live sender goes on sending (real time) until the server closes it."""
    reading = asyncio.create_task(messages_until_closed(ws, 90))
    for i in range(900):  # bounded: 90 s
        if reading.done():
            break
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(pcm[(i * 1600) % len(pcm):][:1600].tobytes())
        await asyncio.sleep(0.1)
    return await reading

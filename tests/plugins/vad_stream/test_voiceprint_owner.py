"""Issue 18 #6, owners: a voiceprint belongs to the token scope that registered it. Real
servers on loopback, the ``websockets`` client, Silero and Resemblyzer on a real recording, and
each voiceprint store ("sqlite", "json", and "redis" on a real redis-server).

- listener tokens T1 and T2, an admin token: T1 registers "victim"; T2 cannot replace it (code
  2, the connection goes on) and does not see it in ``speaker_list``; another T1 connection
  can; the admin token can (the owner stays T1's); the owner is in the store's own file/keys;
- a listener without a token: a second connection cannot replace an id, the registering
  connection can, the admin token can;
- a voiceprint stored before owners were (a Redis hash without ``owner``): only the admin
  token replaces it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import websockets

from asrhub.protocol import token_scope
from asrhub.testing import make_hub, running_server

from .conftest import SPK1_ENROLL, chunks, command, pcm16, recv_json, recv_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

T1, T2, ADMIN = "team-one-token", "team-two-token", "the-admin-token"
ENGINES = {"asr": "whisper", "vad": "silero", "whisper": {"model": "tiny.en"}}
HAVE_REDIS = bool(shutil.which("redis-server"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory, cluster_harness):
    """A real redis-server on loopback, or None where it is not installed."""
    if not HAVE_REDIS:
        yield None
        return
    server = cluster_harness.Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def hub_for(state: Path, store: str, token: Any, redis_url: str = "") -> Any:
    sections: dict[str, Any] = {
        "server": {"state_dir": str(state), "admin_token": ADMIN},
        "engines": {**ENGINES, "voiceprints": store},
        "protocols": {"vad_stream": {"token": token, "speaker_registrations_per_minute": 0}},
    }
    if redis_url:
        sections["cluster"] = {"redis_url": redis_url, "key_prefix": f"owner-{state.name}:"}
    return make_hub(sections, only=["vad_stream"])


def url(srv: Any, token: str = "") -> str:
    return f"ws://127.0.0.1:{srv.ports['vad_stream']}/" + (f"?token={token}" if token else "")


async def register(ws: Any, user_id: str) -> dict:
    """start, 3.15 s of a real speaker, end: the result or the error (refused at start or end)."""
    await ws.send(command("speaker_register_start", user_id=user_id))
    first = await recv_json(ws)
    if first["type"] == "error":
        return first
    for piece in chunks(pcm16(SPK1_ENROLL), 3200):
        await ws.send(piece)
    await ws.send(command("speaker_register_end"))
    seen = await recv_until(ws, lambda m: m["type"] in ("speaker_register_result", "error"), 120)
    return seen[-1]


async def listed(ws: Any) -> list[str]:
    await ws.send(command("speaker_list"))
    listing = await recv_json(ws)
    assert listing["type"] == "speaker_list" and listing["count"] == len(listing["speakers"])
    return [s["user_id"] for s in listing["speakers"]]


async def still_answers(ws: Any) -> None:
    await ws.send(command("ping"))
    assert (await recv_json(ws))["type"] == "pong"


def stored_owner(store: str, state: Path, redis: Any, user_id: str) -> str:
    """The owner as the store keeps it on disk / in Redis, read without asrhub's store code."""
    if store == "sqlite":
        with sqlite3.connect(state / "voiceprints.sqlite3") as db:
            return db.execute("SELECT owner FROM voiceprints WHERE speaker_id = ?", (user_id,)).fetchone()[0]
    if store == "json":
        entry = json.loads((state / "speakers.json").read_text(encoding="utf-8"))["speakers"][user_id]
        return entry.get("owner", "")
    return redis.client().hget(f"owner-{state.name}:vp:{user_id}", "owner").decode()


@pytest_asyncio.fixture(loop_scope="module", params=["sqlite", "json", "redis"])
async def tokened(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   redis_server: Any):
    """A vad_stream listener with two client tokens and the admin token, on one store."""
    store = str(request.param)
    if store == "redis" and redis_server is None:
        pytest.skip("redis-server (make system-deps) not installed")
    redis = redis_server if store == "redis" else None
    state = tmp_path_factory.mktemp(f"owner-{store}")
    async with running_server(hub_for(state, store, [T1, T2], redis.url if redis else "")) as srv:
        yield srv, store, state, redis


async def test_only_the_owner_token_or_the_admin_replaces_a_voiceprint(tokened):
    srv, store, state, redis = tokened
    async with websockets.connect(url(srv, T1)) as a:
        outcome = await register(a, "victim")
        assert outcome["type"] == "speaker_register_result" and outcome["success"] is True, outcome
    assert stored_owner(store, state, redis, "victim") == token_scope(T1)

    async with websockets.connect(url(srv, T2)) as b:
        refused = await register(b, "victim")
        assert (refused["type"], refused["code"]) == ("error", 2), refused
        assert "already registered" in refused["message"]
        await still_answers(b)  # the connection survives
        assert "victim" not in await listed(b)  # another scope's id is not shown
        mine = await register(b, "bystander")  # T2 registers its own id meanwhile
        assert mine["type"] == "speaker_register_result", mine
        assert await listed(b) == ["bystander"]
    assert stored_owner(store, state, redis, "victim") == token_scope(T1)  # untouched

    async with websockets.connect(url(srv, T1)) as a2:  # another connection, the owner's token
        assert "victim" in await listed(a2) and "bystander" not in await listed(a2)
        outcome = await register(a2, "victim")
        assert outcome["type"] == "speaker_register_result", outcome

    async with websockets.connect(url(srv, ADMIN)) as admin:
        assert set(await listed(admin)) >= {"victim", "bystander"}
        outcome = await register(admin, "victim")
        assert outcome["type"] == "speaker_register_result", outcome
    # the admin re-enrolled it on the owner's behalf: T1 still owns it
    assert stored_owner(store, state, redis, "victim") == token_scope(T1)
    assert (await srv.hub.voiceprints()).get("victim").owner == token_scope(T1)

    with pytest.raises(websockets.InvalidHandshake, match="401"):  # no client's, not the admin's
        await websockets.connect(url(srv, "not-a-token"))


async def test_without_a_token_only_the_registering_connection_or_the_admin(tmp_path):
    async with running_server(hub_for(tmp_path / "state", "sqlite", "")) as srv:
        async with websockets.connect(url(srv)) as first:
            assert (await register(first, "victim"))["type"] == "speaker_register_result"
            async with websockets.connect(url(srv)) as second:
                refused = await register(second, "victim")
                assert (refused["type"], refused["code"]) == ("error", 2), refused
                await still_answers(second)
                assert "victim" in await listed(second)  # no owner: shown to everyone
            # the registering connection may register it again (a retry)
            assert (await register(first, "victim"))["type"] == "speaker_register_result"
        async with websockets.connect(url(srv, ADMIN)) as admin:  # accepted on an open listener
            assert (await register(admin, "victim"))["type"] == "speaker_register_result"
        assert stored_owner("sqlite", tmp_path / "state", None, "victim") == ""


async def test_a_voiceprint_stored_without_an_owner_is_the_admins_to_replace(redis_server, tmp_path):
    """A Redis hash written before owners were stored (no ``owner`` field) reads as owner "":
    no client token may replace it, the admin token may (and the owner stays "")."""
    if redis_server is None:
        pytest.skip("redis-server (make system-deps) not installed")
    state = tmp_path / "legacy"
    async with running_server(hub_for(state, "redis", [T1], redis_server.url)) as srv:
        async with websockets.connect(url(srv, T1)) as a:
            assert (await register(a, "old"))["type"] == "speaker_register_result"
        key = f"owner-{state.name}:vp:old"
        client = redis_server.client()
        client.hdel(key, "owner")  # as the store wrote it before
        assert (await srv.hub.voiceprints()).get("old").owner == ""
        async with websockets.connect(url(srv, T1)) as a2:
            assert "old" in await listed(a2)
            refused = await register(a2, "old")
            assert (refused["type"], refused["code"]) == ("error", 2), refused
        async with websockets.connect(url(srv, ADMIN)) as admin:
            assert (await register(admin, "old"))["type"] == "speaker_register_result"
        assert client.hget(key, "owner") == b""

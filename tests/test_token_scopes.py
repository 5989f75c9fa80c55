"""Several tokens per listener and ``[server] admin_token``: which credential a connection or
request presented reaches the plugin (``Channel.credential``, ``credential_of(request)``) as a
token scope, never as the token; a reload swaps tokens at once. A real server on loopback and
aiohttp's client."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from asrhub.config import ConfigError, parse_config
from asrhub.hookspecs import hookimpl
from asrhub.protocol import (
    Channel,
    ProtocolContext,
    Session,
    WebSocketRoute,
    credential_of,
    token_scope,
)
from asrhub.specs import ProtocolSpec
from asrhub.testing import ECHO_CODES, EchoSettings, free_port, make_hub, running_server

T1, T2, ADMIN = "team-one", "team-two", "root-of-it-all"


class WhoSession(Session):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def on_open(self) -> None:
        credential = self.channel.credential
        self.channel.send_json({"scope": credential.scope, "admin": credential.admin})


def _who_setup(ctx: ProtocolContext) -> None:
    async def who(request: web.Request) -> web.Response:
        credential = credential_of(request)
        return web.json_response({"scope": credential.scope, "admin": credential.admin})

    ctx.websocket(WebSocketRoute("/ws", lambda channel, request: WhoSession(channel),
                                 lambda err: {"error": err.message}, ECHO_CODES))
    assert ctx.app is not None
    ctx.app.router.add_get("/who", who)


class WhoPlugin:
    @hookimpl
    def asrhub_register_protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec("who", 1, "who am I, for tests", _who_setup, EchoSettings)]


def who_hub(token: object, admin_token: str = ADMIN):
    section = {"enabled": True, "port": free_port(), "token": token}
    return make_hub({"server": {"admin_token": admin_token}, "protocols": {"who": section}},
                    only=["who"], extra_plugins=[WhoPlugin()])


async def ask(http: aiohttp.ClientSession, port: int, token: str | None) -> tuple[int, dict | None]:
    """What /who and the WebSocket say for ``token`` (None: none sent): (HTTP status, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.get(f"http://127.0.0.1:{port}/who", headers=headers) as resp:
        status, body = resp.status, (await resp.json() if resp.status == 200 else None)
    if status == 200:
        async with http.ws_connect(f"http://127.0.0.1:{port}/ws", headers=headers) as ws:
            assert await ws.receive_json() == body  # the socket's channel knows the same
    return status, body


def test_token_is_a_string_or_a_list():
    config = parse_config({"server": {"token": ["a", "b", "a"], "admin_token": "z"}})
    hub = make_hub({"server": {"token": ["a", "b", "a"]}}, only=["who"], extra_plugins=[WhoPlugin()])
    assert config.server.token == ["a", "b", "a"] and config.server.admin_token == "z"
    assert hub.listener("who").config.token == ("a", "b")
    assert make_hub({"server": {"token": "one"}}, only=["who"],
                    extra_plugins=[WhoPlugin()]).listener("who").config.token == ("one",)
    assert make_hub({}, only=["who"], extra_plugins=[WhoPlugin()]).listener("who").config.token == ()
    with pytest.raises(ConfigError, match=r"token\[1\]: an empty token"):
        make_hub({"server": {"token": ["a", ""]}}, only=["who"], extra_plugins=[WhoPlugin()])
    with pytest.raises(ConfigError, match="token"):
        make_hub({"protocols": {"who": {"token": 5}}}, only=["who"], extra_plugins=[WhoPlugin()])
    with pytest.raises(ConfigError, match="admin_token: expected a string"):
        parse_config({"server": {"admin_token": ["x"]}})


def test_tokens_in_a_list_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("ASRHUB_TEST_TEAM_A", "from-env")
    config = parse_config({"server": {"token": ["env:ASRHUB_TEST_TEAM_A", "b"]}})
    assert config.server.token == ["from-env", "b"]
    monkeypatch.delenv("ASRHUB_TEST_TEAM_A")
    with pytest.raises(ConfigError, match=r"token\[0\]: environment variable ASRHUB_TEST_TEAM_A"):
        parse_config({"server": {"token": ["env:ASRHUB_TEST_TEAM_A", "b"]}})


def test_check_config_validates_tokens(tmp_path, capsys):
    from asrhub.cli import main

    config = tmp_path / "asrhub.toml"
    config.write_text('[server]\ntoken = ["a", "b"]\nadmin_token = "c"\n', encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == 0
    config.write_text('[server]\ntoken = ["a", ""]\n', encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == 2
    assert "empty token" in capsys.readouterr().err


async def test_each_token_is_its_own_scope_and_the_admin_token_is_accepted_too():
    hub = who_hub([T1, T2])
    async with running_server(hub) as srv, aiohttp.ClientSession() as http:
        port = srv.ports["who"]
        assert await ask(http, port, T1) == (200, {"scope": token_scope(T1), "admin": False})
        assert await ask(http, port, T2) == (200, {"scope": token_scope(T2), "admin": False})
        assert await ask(http, port, ADMIN) == (200, {"scope": token_scope(ADMIN), "admin": True})
        assert (await ask(http, port, None))[0] == 401
        assert (await ask(http, port, "team-three"))[0] == 401
        assert (await ask(http, port, T1 + "x"))[0] == 401
    assert len({token_scope(T1), token_scope(T2), token_scope(ADMIN)}) == 3
    assert token_scope(T1) == token_scope(T1) and len(token_scope(T1)) == 16
    assert T1 not in token_scope(T1)


async def test_a_listener_without_a_token_is_anonymous_but_knows_the_admin():
    async with running_server(who_hub("")) as srv, aiohttp.ClientSession() as http:
        port = srv.ports["who"]
        assert await ask(http, port, None) == (200, {"scope": "", "admin": False})
        assert await ask(http, port, "whatever") == (200, {"scope": "", "admin": False})
        assert await ask(http, port, ADMIN) == (200, {"scope": token_scope(ADMIN), "admin": True})


async def test_reload_swaps_client_tokens_and_the_admin_token():
    hub = who_hub([T1])
    async with running_server(hub) as srv, aiohttp.ClientSession() as http:
        port = srv.ports["who"]
        assert (await ask(http, port, T1))[0] == 200
        protocols = {k: dict(v) for k, v in hub.config.protocol_sections.items()}
        protocols["who"]["token"] = [T2]
        srv.reload(parse_config({"server": {"host": "127.0.0.1", "preload": False,
                                            "state_dir": hub.config.server.state_dir,
                                            "admin_token": "new-admin"},
                                 "protocols": protocols}))
        assert (await ask(http, port, T1))[0] == 401
        assert await ask(http, port, T2) == (200, {"scope": token_scope(T2), "admin": False})
        assert (await ask(http, port, ADMIN))[0] == 401
        assert await ask(http, port, "new-admin") == (200, {"scope": token_scope("new-admin"),
                                                            "admin": True})

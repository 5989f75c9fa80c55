"""Helpers for tests of asrhub and of its plugins (no mocks: real servers on loopback)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from asrhub.config import parse_config
from asrhub.hookspecs import hookimpl
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.protocol import (
    Channel,
    CloseInfo,
    ErrorCodes,
    ListenerSettings,
    ProtocolContext,
    ProtocolError,
    Session,
    WebSocketRoute,
)
from asrhub.specs import ProtocolSpec


def testdata_dir() -> Path:
    """``shared/testdata`` beside the checkout (CI), or $ASRHUB_TESTDATA, or /work/shared."""
    candidates = [os.environ.get("ASRHUB_TESTDATA", ""),
                  str(Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"),
                  "/work/shared/testdata"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("test audio not found: set ASRHUB_TESTDATA to shared/testdata")


# Not a test, though its name starts with "test": pytest would collect it where it is imported.
testdata_dir.__test__ = False  # type: ignore[attr-defined]


def normalize_english(text: str) -> str:
    """Lower-case, digits spelt out, punctuation stripped: Whisper writes "10 of clubs"."""
    import re

    from num2words import num2words

    text = text.lower().replace("-", " ")
    text = re.sub(r"\d+", lambda m: " " + num2words(int(m.group())) + " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text.replace(",", " "))
    return " ".join(text.replace("'", "").split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after :func:`normalize_english` (jiwer does the alignment)."""
    import jiwer

    ref, hyp = normalize_english(reference), normalize_english(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or "<empty>"))


def cer_chinese(reference: str, hypothesis: str) -> float:
    """Character error rate on CJK characters only (punctuation and spaces removed)."""
    import re

    import jiwer

    keep = lambda s: "".join(re.findall(r"[\u4e00-\u9fff]", s))  # noqa: E731
    return float(jiwer.cer(keep(reference), keep(hypothesis) or "-"))


def manifest() -> dict[str, dict[str, str]]:
    """``MANIFEST.tsv`` rows by file name (relative to testdata)."""
    import csv

    with open(testdata_dir() / "MANIFEST.tsv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_hub(sections: dict[str, Any] | None = None, *, only: Iterable[str] | None = None,
             extra_plugins: Iterable[object] = ()) -> Hub:
    """A hub on 127.0.0.1. With ``only``, every other protocol is disabled and the named ones
    get free ports (unless their section sets one)."""
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in (sections or {}).items()}
    server = {"host": "127.0.0.1", "preload": False, **sections.pop("server", {})}
    if not server.get("state_dir"):
        # Never the user's real state (voiceprints, file tasks): a fresh directory per hub.
        import atexit
        import shutil
        import tempfile

        server["state_dir"] = tempfile.mkdtemp(prefix="asrhub-test-")
        atexit.register(shutil.rmtree, server["state_dir"], ignore_errors=True)
    plugins = list(extra_plugins)
    if only is not None:
        only = set(only)
        probe = Hub(parse_config({"server": server}), make_plugin_manager(plugins))
        protocols = {k: dict(v) for k, v in sections.get("protocols", {}).items()}
        for name, spec in probe.protocols.items():
            section = protocols.setdefault(name, {})
            if name in only:
                section.setdefault("enabled", True)
                section.setdefault("port", free_port())
                for extra in spec.extra_ports:
                    section.setdefault(extra, {}).setdefault("port", free_port())
            else:
                section["enabled"] = False
        sections["protocols"] = protocols
    return Hub(parse_config({"server": server, **sections}), make_plugin_manager(plugins))


@contextlib.asynccontextmanager
async def running_server(hub: Hub, *, preload: bool = False) -> AsyncIterator[Any]:
    """Start every enabled listener of ``hub``; yields the Server (``server.ports[name]``)."""
    from asrhub.server import Server

    server = Server(hub)
    await server.start(preload=preload)
    try:
        yield server
    finally:
        await server.stop()


@dataclass(frozen=True)
class EchoSettings(ListenerSettings):
    greeting: str = "hello"


ECHO_CODES = ErrorCodes(bad_message="bad_message", too_big="too_big", busy="busy",
                        internal="internal", too_many_connections="too_many_connections")


class EchoSession(Session):
    """Greets, echoes text, counts binary bytes as 16 kHz int16 audio; ``fail`` raises inside
    the hub, ``bad`` raises a protocol error (for the core's own tests)."""

    def __init__(self, channel: Channel, settings: EchoSettings) -> None:
        self.channel = channel
        self.settings = settings
        self.closed_with: CloseInfo | None = None

    async def on_open(self) -> None:
        self.channel.send_json({"type": "hello", "greeting": self.settings.greeting})

    async def on_text(self, text: str) -> None:
        if text == "fail":
            raise RuntimeError("boom")
        if text == "bad":
            raise ProtocolError("bad_message", "you asked for it")
        self.channel.send_json({"echo": text})

    async def on_binary(self, data: bytes) -> None:
        self.audio_seconds += len(data) / 32000

    async def on_close(self, info: CloseInfo) -> None:
        self.closed_with = info
        if info.shutdown:
            self.channel.send_json({"type": "bye", "audio_s": self.audio_seconds})


def _echo_setup(ctx: ProtocolContext) -> None:
    from asrhub.appkeys import HUB_KEY

    hub = ctx.hub

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"hub": request.app[HUB_KEY] is hub})

    ctx.websocket(WebSocketRoute(
        path="/ws", codes=ECHO_CODES,
        open_session=lambda channel, request: EchoSession(channel, ctx.settings),
        error_message=lambda err: {"type": "error", "code": err.code, "message": err.message}))
    assert ctx.app is not None
    ctx.app.router.add_get("/", info)


class EchoPlugin:
    """A minimal protocol (no models) for testing the core itself."""

    @hookimpl
    def asrhub_register_protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec("echo", 1, "echo for tests", _echo_setup, EchoSettings)]

"""Helpers for tests of asrhub and of its plugins (no mocks: real servers on loopback)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from asrhub.config import parse_config
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager


def testdata_dir() -> Path:
    """``shared/testdata`` beside the checkout (CI), or $ASRHUB_TESTDATA, or /work/shared."""
    candidates = [os.environ.get("ASRHUB_TESTDATA", ""),
                  str(Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"),
                  "/work/shared/testdata"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("test audio not found: set ASRHUB_TESTDATA to shared/testdata")


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

"""Every hook is documented, named asrhub_*, and actually called by the hub/server."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest

from asrhub import hookspecs
from asrhub.config import parse_config
from asrhub.hookspecs import hookimpl
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager, plugin_names
from asrhub.specs import EngineSpec
from asrhub.testing import EchoPlugin, make_hub, running_server

HOOKS = [name for name, obj in vars(hookspecs).items()
         if callable(obj) and hasattr(obj, "asrhub_spec")]


def test_hooks_exist_and_are_documented():
    assert HOOKS, "no hookspecs found"
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        assert name.startswith("asrhub_"), name
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 40, f"{name} needs a docstring saying when it is called"
        assert "called" in doc.lower(), f"{name}: say when it is called"
        assert "firstresult" in doc.lower() or "collected" in doc.lower(), \
            f"{name}: say whether results are collected or firstresult"


def test_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def asrhub_register_protocolz(self):
            return []

    with pytest.raises(Exception, match="asrhub_register_protocolz"):
        make_plugin_manager([Typo()], load_entry_points=False)


@dataclass(frozen=True)
class ToySettings:
    level: float = 0.5


class ToyVAD:
    """A trivial energy VAD, enough to prove the engine hooks wire through."""

    name = "toy"

    def __init__(self, settings: ToySettings) -> None:
        self.level = settings.level

    def speech_regions(self, audio):
        loud = np.flatnonzero(np.abs(audio) > self.level)
        return [(int(loud[0]), int(loud[-1]) + 1)] if len(loud) else []

    def open_stream(self):
        raise NotImplementedError

    def close(self):
        self.closed = True


class Recorder:
    def __init__(self):
        self.calls: list[str] = []

    def _spec(self, kind):
        self.calls.append(kind)
        return [EngineSpec(f"toy-{kind}", "toy", lambda s, hub: ToyVAD(s), ToySettings)]

    @hookimpl
    def asrhub_register_asr_engines(self):
        return self._spec("asr")

    @hookimpl
    def asrhub_register_vad_engines(self):
        return self._spec("vad")

    @hookimpl
    def asrhub_register_speaker_engines(self):
        return self._spec("speaker")

    @hookimpl
    def asrhub_register_denoisers(self):
        return self._spec("denoise")

    @hookimpl
    def asrhub_register_voiceprint_stores(self):
        return self._spec("voiceprints")

    @hookimpl
    def asrhub_startup(self, hub):
        self.calls.append("startup")

    @hookimpl
    def asrhub_shutdown(self, hub):
        self.calls.append("shutdown")

    @hookimpl
    def asrhub_session_closed(self, hub, summary):
        self.calls.append(f"closed:{summary['protocol']}")


def test_register_engine_hooks_build_lookup_tables_and_load_once():
    recorder = Recorder()
    hub = Hub(parse_config({"engines": {"vad": "toy-vad", "toy-vad": {"level": 0.1}}}),
              make_plugin_manager([recorder]))
    for kind in ("asr", "vad", "speaker", "denoise", "voiceprints"):
        assert f"toy-{kind}" in hub.engine_specs[kind]
        assert kind in recorder.calls
    first = hub.engine_sync("vad")
    assert first is hub.engine_sync("vad"), "engines are shared, loaded once"
    assert first.level == 0.1
    audio = np.zeros(1600, np.float32)
    audio[400:800] = 0.5
    assert first.speech_regions(audio) == [(400, 800)]
    hub.unload_engines()
    assert first.closed


async def test_lifecycle_hooks_register_protocols_startup_session_shutdown():
    recorder = Recorder()
    hub = make_hub({}, only=["echo"], extra_plugins=[EchoPlugin(), recorder])
    assert "echo" in hub.protocols  # asrhub_register_protocols
    async with running_server(hub) as server:
        assert "startup" in recorder.calls
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{server.ports['echo']}/ws")
            await ws.receive_json()
            await ws.close()
        for _ in range(100):
            if "closed:echo" in recorder.calls:
                break
            import asyncio

            await asyncio.sleep(0.01)
        assert "closed:echo" in recorder.calls
    assert recorder.calls[-1] == "shutdown"


def test_builtin_plugins_load_through_entry_points():
    names = dict(plugin_names(make_plugin_manager()))
    for builtin in ("whisper", "vad", "funasr"):
        assert builtin in names and names[builtin].startswith("asrhub ")

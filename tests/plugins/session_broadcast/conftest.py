"""Fixtures for the session-broadcast tests: real recordings (16 kHz mono wavs made in a tmp
dir), fresh copies of the seed's client examples, and helpers to talk to a real server."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from asrhub.audio import decode_file
from asrhub.protocol import Channel, ProtocolContext, Transport
from asrhub.testing import manifest, testdata_dir

HERE = Path(__file__).resolve().parent
RATE = 16000


def load_doc_client(name: str, **values: Any) -> tuple[ModuleType, list[str]]:
    """A fresh module object of ``doc_sender``/``doc_receiver`` with its configuration values
    replaced and its ``print`` captured (a list per copy, so concurrent clients stay apart)."""
    spec = importlib.util.spec_from_file_location(f"{name}_{id(values)}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in values.items():
        assert hasattr(module, key), key
        setattr(module, key, value)
    printed: list[str] = []
    module.print = lambda *args: printed.append(" ".join(str(a) for a in args))  # type: ignore[attr-defined]
    return module, printed


def received_results(printed: list[str]) -> list[dict]:
    """The JSON messages a doc receiver printed ("收到结果: ...")."""
    prefix = "收到结果: "
    return [json.loads(line[len(prefix):]) for line in printed if line.startswith(prefix)]


def load(rel: str) -> np.ndarray:
    return decode_file(testdata_dir() / rel)


def quiet(seconds: float, seed: int = 0) -> np.ndarray:
    """Low room noise, never exact zeros: the seed's sender stops at the first all-zero chunk
    (``if not data.any(): break``)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 1e-3).astype(np.float32)


def write_wav(path: Path, parts: list[np.ndarray]) -> Path:
    sf.write(str(path), np.concatenate(parts), RATE, subtype="FLOAT")
    return path


# One LibriVox reader, three sentences with pauses (the seed's sender asserts 16 kHz mono).
CLIPS = ["en/pocketsphinx_librivox_ss01_0880.wav", "en/pocketsphinx_librivox_ss01_0890.wav",
         "en/pocketsphinx_librivox_ss01_0930.wav"]


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("broadcast_audio")
    rows = manifest()
    parts: list[np.ndarray] = [quiet(0.5, 1)]
    for index, clip in enumerate(CLIPS):
        parts += [load(clip), quiet(1.2, index + 2)]
    parts[-1] = quiet(0.3, 9)  # ends soon after the speech: the last segment ends after "close"
    return {
        "three": write_wav(folder / "three_sentences.wav", parts),
        "three_texts": [rows[c]["transcript"] for c in CLIPS],
        "spk1_test": write_wav(folder / "spk1_test.wav",
                               [quiet(0.3, 3), load("en/speechbrain_spk1_snt3.wav"), quiet(0.3, 4)]),
        "short": write_wav(folder / "short.wav",
                           [quiet(0.3, 5), load("en/pocketsphinx_goforward.wav"), quiet(0.3, 6)]),
        "short_text": rows["en/pocketsphinx_goforward.wav"]["transcript"],
    }


def context(hub: Any, settings: Any) -> ProtocolContext:
    """The context the core would hand session_broadcast's setup (the hub has an executor)."""
    return ProtocolContext(name="session_broadcast", hub=hub, settings=settings,
                           listener=hub.listener("session_broadcast").config, executor=hub.executor,
                           metrics=hub.metrics, loop_lag=hub.loop_lag, transport=Transport(hub))


class ListChannel(Channel):
    """The kit's own :class:`Channel` (bounded outbox, JSON encoding, close rules) writing into a
    list instead of a socket. ``stuck``: a client that stopped reading (its outbox holds one
    message; the next one overflows it and closes the client with 1008)."""

    def __init__(self, ctx: ProtocolContext, *, stuck: bool = False) -> None:
        from asrhub.protocol import WebSocketRoute
        from asrhub_plugins.session_broadcast.messages import CODES, error_message

        self.messages: list[Any] = []
        self.stuck = stuck
        self._gone = False
        route = WebSocketRoute("/", lambda channel, request: None, error_message, CODES)  # type: ignore[arg-type, return-value]
        super().__init__(ctx, route, "127.0.0.1", 1 if stuck else 10_000)

    def _transport_closed(self) -> bool:
        return self._gone

    async def _write(self, item: str | bytes) -> None:
        if self.stuck:
            await asyncio.Event().wait()  # never written
        self.messages.append(json.loads(item) if isinstance(item, str) else item)

    async def _transport_close(self, code: int, reason: str) -> None:
        self._gone = True

    @property
    def results(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if isinstance(m, dict) and "asr" in m]

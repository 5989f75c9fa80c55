"""Limits and failures, as the SDK sees them: 413 over the body limit, 429 over the listener's
concurrent requests, 503 when the inference executor is full (both with Retry-After), and a
client that goes away stops the work on its file."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI

from asrhub.testing import make_hub, running_server
from asrhub_plugins.openai_api.service import SERVICE_KEY

from .conftest import READER, TOKEN, hub_sections, joined, wav_bytes

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# ~115 s of speech: 12 pieces of 10 s.
LONG = np.concatenate([joined(READER)] * 4)


def _client(srv, **kw) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=TOKEN, base_url=f"http://127.0.0.1:{srv.ports['openai_api']}/v1",
                       max_retries=0, **kw)


async def test_oversized_upload_is_413() -> None:
    hub = make_hub(hub_sections(max_body_bytes=200_000), only=["openai_api"])
    async with running_server(hub) as srv:
        client = _client(srv)
        with pytest.raises(openai.APIStatusError) as info:
            await client.audio.transcriptions.create(model="whisper-1",
                                                     file=("big.wav", wav_bytes(joined(READER[:2]))))
        assert info.value.status_code == 413 and info.value.code == "file_too_large"
        # Under the limit, the same listener still answers.
        small = await client.audio.transcriptions.create(model="whisper-1",
                                                         file=("s.wav", wav_bytes(joined([READER[1]]))))
        assert "young man" in small.text.lower()


async def test_busy_listener_is_429_and_full_executor_is_503() -> None:
    sections = hub_sections(max_concurrent_requests=1, queue_timeout_s=0.3, retry_after_s=7)
    sections["executor"] = {"workers": 1, "max_pending": 1}
    hub = make_hub(sections, only=["openai_api"])
    async with running_server(hub, preload=True) as srv:
        client = _client(srv)
        wav = wav_bytes(joined([READER[1]]))
        gate = threading.Event()
        # Take the executor's only slot until the gate opens.
        blocker = asyncio.ensure_future(hub.executor.run(gate.wait, 60))
        await asyncio.sleep(0.1)
        try:
            with pytest.raises(openai.InternalServerError) as info:
                await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
            assert info.value.status_code == 503 and info.value.code == "server_busy"
            assert info.value.response.headers["Retry-After"] == "7"
            # While one request waits for the executor, a second is over the listener's limit.
            first = asyncio.ensure_future(client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav)))
            service = srv.contexts["openai_api"].app[SERVICE_KEY]
            for _ in range(200):
                if service.active:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as limited:
                await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
            assert limited.value.status_code == 429
            assert limited.value.response.headers["Retry-After"] == "7"
            with pytest.raises(openai.InternalServerError):
                await first  # it waited 0.3 s for the executor: 503 as well
        finally:
            gate.set()
            await blocker
        ok = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        assert "young man" in ok.text.lower()


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_stops_the_work(stream: bool) -> None:
    hub = make_hub(hub_sections(), only=["openai_api"])
    async with running_server(hub, preload=True) as srv:
        service = srv.contexts["openai_api"].app[SERVICE_KEY]
        total_pieces = -(-len(LONG) // 160_000)
        assert total_pieces >= 11
        client = _client(srv, timeout=300)
        if stream:
            events = await client.audio.transcriptions.create(model="whisper-1", stream=True,
                                                              file=("long.wav", wav_bytes(LONG)))
            async for event in events:
                assert event.type == "transcript.text.delta"
                break
            await events.response.aclose()
        else:
            request = asyncio.create_task(client.audio.transcriptions.create(
                model="whisper-1", file=("long.wav", wav_bytes(LONG))))
            for _ in range(3000):  # the client leaves once the first piece is recognised
                if service.pieces or request.done():
                    break
                await asyncio.sleep(0.005)
            request.cancel()  # closes its connection
            with pytest.raises(asyncio.CancelledError):
                await request
        await client.close()
        for _ in range(3000):  # the request ends soon after the client left
            if not service.active:
                break
            await asyncio.sleep(0.01)
        assert service.active == 0
        assert service.pieces < total_pieces, (service.pieces, total_pieces)

"""The event loop keeps answering while a long real transcription runs in the executor."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from asrhub.audio import decode_file
from asrhub.testing import EchoPlugin, make_hub, running_server


async def test_loop_lag_stays_low_during_a_long_transcription(testdata):
    clips = [decode_file(testdata / f"en/pocketsphinx_librivox_ss01_0{n}.wav")
             for n in (870, 890, 920, 930, 880)]
    long_audio = np.concatenate(clips * 3)  # ~74 s of speech
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}}, only=["echo"],
                   extra_plugins=[EchoPlugin()])
    async with running_server(hub, preload=True) as server:
        engine = await hub.asr()
        lags: list[float] = []
        answered: list[float] = []

        async def probe_loop() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)

        async def probe_http() -> None:
            async with aiohttp.ClientSession() as http:
                while True:
                    before = time.perf_counter()
                    async with http.get(f"http://127.0.0.1:{server.ports['echo']}/health") as resp:
                        assert resp.status == 200
                    answered.append(time.perf_counter() - before)
                    await asyncio.sleep(0.05)

        probes = [asyncio.create_task(probe_loop()), asyncio.create_task(probe_http())]
        started = time.perf_counter()
        transcript = await hub.executor.run(engine.transcribe, long_audio)
        took = time.perf_counter() - started
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
    assert len(transcript.text.split()) > 100
    assert took > 1.0, "the transcription should be long enough to measure anything"
    assert len(lags) > 50 and len(answered) > 10
    lags.sort()
    p99 = lags[int(0.99 * (len(lags) - 1))]
    # Generous bounds for a shared CI machine; bench/ measures the real figures (p99 ~5 ms).
    assert p99 < 0.1, f"loop lag p99 {p99 * 1000:.1f} ms"
    assert max(answered) < 1.0, f"/health took {max(answered):.2f} s during the transcription"

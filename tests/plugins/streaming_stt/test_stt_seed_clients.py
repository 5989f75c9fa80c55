"""The seed's three client examples, unchanged, against a real server (Whisper tiny.en).

Only their audio source differs: the Python examples get a stand-in ``pyaudio`` that plays a
wav file at (2x) real-time pace (fake_pyaudio/), and the JavaScript class runs in a real
headless Chromium whose fake microphone plays the wav, so ``MediaRecorder`` sends genuine
webm/opus chunks. Each example's hard-coded ``ws://localhost:8765`` is pointed at the test
server's port.

How each example finishes:
- the simplified one sends stop itself after 100 reads → final → session_ended;
- the JS class sends stop from ``stopRecording``; its MediaRecorder's last chunk arrives after
  the stop and still goes into the final (the server's stop grace, ``stop_grace_s``);
- the asyncio class only sends stop after its receive loop saw session_ended, so the server's
  idle end (``idle_end_s``, 2 s without audio) ends the session; the class's stop is then
  answered with the same final and session_ended, which nobody reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest
import pytest_asyncio
import stt_helpers as h
from aiohttp import web

from asrhub.testing import free_port, make_hub, running_server, wer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.models]
PROTOCOL = "streaming_stt"
HERE = Path(__file__).resolve().parent
SPEED = 2.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}}, only=[PROTOCOL])
    async with running_server(hub, preload=True) as srv:
        yield srv


def point_at(code: str, server) -> str:
    assert code.count("ws://localhost:8765") == 1
    return code.replace("ws://localhost:8765", f"ws://127.0.0.1:{server.ports[PROTOCOL]}")


async def run_example(code: str, wav: Path, tmp_path: Path, timeout: float) -> tuple[int, str]:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(HERE / "fake_pyaudio"), "FAKE_PYAUDIO_WAV": str(wav),
           "FAKE_PYAUDIO_SPEED": str(SPEED), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"the example hung; it printed:\n{out.decode()}")
    return proc.returncode or 0, out.decode()


async def test_examples_are_the_seeds_verbatim() -> None:
    examples = h.seed_examples()
    assert "await self.stop_session()" in examples["asyncio"].split("asyncio.gather(")[1]
    assert "for _ in range(100)" in examples["simple"]
    assert "this.mediaRecorder.start(100)" in examples["js"]


@pytest.mark.slow  # 10 s of "recording" at 2x, then the 2 s idle end
async def test_seed_asyncio_class(server, tmp_path: Path) -> None:
    # run(duration=10): 10 s "recorded" (7.1 s of speech, then the microphone hears silence).
    clip = h.CLIPS[0]
    wav = h.write_wav(tmp_path / "speech.wav", h.with_pauses([h.clip_audio(clip)], 0.0, 0.3))
    code, out = await run_example(point_at(h.seed_examples()["asyncio"], server), wav, tmp_path, 60)
    print("\n" + out)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("{'type': 'connected'") and lines[1] == "{'type': 'session_started'}"
    assert any(line.startswith("部分结果: ") for line in lines), out
    finals = [line.removeprefix("最终结果: ") for line in lines if line.startswith("最终结果: ")]
    assert len(finals) == 1 and wer(h.transcript(clip), finals[0]) <= 0.15, out
    assert lines.index("会话结束") > lines.index("录音结束") and "接收错误" not in out, out


async def test_seed_simplified_client(server, tmp_path: Path) -> None:
    # 100 reads of 1024 frames (6.4 s): the 3.3 s recording, then silence; then stop.
    clip = h.CLIPS[1]
    wav = h.write_wav(tmp_path / "speech.wav", h.with_pauses([h.clip_audio(clip)], 0.0, 0.3))
    code, out = await run_example(point_at(h.seed_examples()["simple"], server), wav, tmp_path, 60)
    print("\n" + out)
    assert code == 0, out
    lines = out.splitlines()
    assert '"type": "connected"' in lines[0] and lines[1] == '{"type": "session_started"}', out
    finals = [line.removeprefix("final: ") for line in lines if line.startswith("final: ")]
    assert len(finals) == 1 and wer(h.transcript(clip), finals[0]) <= 0.15, out
    assert any(line.startswith("partial: ") for line in lines), out


@pytest.mark.browser
@pytest.mark.slow
async def test_seed_javascript_class_in_chromium(server, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make system-deps installs it)")
    from playwright.async_api import async_playwright

    clip = h.CLIPS[1]
    # The example records 5 s (setTimeout 5000): 0.5 s of silence, 3.3 s of speech, silence.
    audio = h.with_pauses([h.clip_audio(clip)], pause_s=3.0, lead_s=0.5)
    wav = h.write_wav(tmp_path / "mic.wav", audio)
    page_html = ("<!doctype html><meta charset='utf-8'><title>seed client</title>"
                 "<div id='result'></div><div id='final'></div>\n<script type='module'>\n"
                 + point_at(h.seed_examples()["js"], server) + "\n</script>\n")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page_html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    console: list[str] = []
    errors_before = dict(server.hub.counters[PROTOCOL].errors)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required"])
            try:
                page = await browser.new_page()
                page.on("console", lambda msg: console.append(msg.text))
                await page.goto(f"http://127.0.0.1:{port}/")
                await page.wait_for_function("document.getElementById('final').textContent.length > 0",
                                             timeout=30000)
                final = await page.text_content("#final")
                await page.wait_for_function("true", timeout=1000)
                for _ in range(50):
                    if "会话已结束" in console:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
    assert "已连接到流式 STT 服务" in console and "会话已开始" in console, console
    assert any(line.startswith("部分结果:") for line in console), console
    assert "会话已结束" in console, console
    assert final is not None and wer(h.transcript(clip), final) <= 0.2, (final, console)
    # MediaRecorder's last chunk came after the stop: it joined the final, no error was sent.
    assert dict(server.hub.counters[PROTOCOL].errors) == errors_before
    print(f"\nChromium MediaRecorder webm/opus → final {final!r}")

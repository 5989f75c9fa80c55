"""The demo page in a real browser: Debian's Chromium, headless, with a fake microphone that
plays a test recording, against a real asrhub server. The recognised text must show up on the
page; each test saves a screenshot under tests/_artifacts/."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import pytest_asyncio

from asrhub.testing import make_hub, manifest, running_server, wer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
CLIP = "en/pocketsphinx_librivox_ss01_0870.wav"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}},
                   only=["ptt", "streaming_stt", "vad_stream", "file_transcription"])
    async with running_server(hub, preload=True) as srv:
        yield srv


async def open_page(url: str, audio: Path):
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={audio}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ])
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
    await page.goto(url)
    return pw, browser, page, console


async def speak_into(page, seconds: float) -> None:
    await page.click("#start")
    await page.wait_for_function("document.querySelector('#stop').disabled === false", timeout=20000)
    await asyncio.sleep(seconds)


async def finals_text(page, timeout: float = 30.0) -> str:
    await page.wait_for_function("document.querySelectorAll('#finals li').length > 0",
                                 timeout=timeout * 1000)
    await asyncio.sleep(0.5)
    return " ".join(await page.locator("#finals li").all_inner_texts())


@pytest.mark.parametrize("protocol", ["ptt", "streaming_stt", "vad_stream"])
async def test_microphone_to_text_on_the_page(server, testdata, protocol):
    ARTIFACTS.mkdir(exist_ok=True)
    reference = manifest()[CLIP]["transcript"]
    if protocol == "ptt":  # the page as /test on the PTT port
        url = f"http://127.0.0.1:{server.ports['ptt']}/test"
    else:                  # the page on the static port next to the VAD stream
        url = f"http://127.0.0.1:{server.ports['vad_stream.static']}/?protocol={protocol}"
    pw, browser, page, console = await open_page(url, testdata / CLIP)
    try:
        assert await page.locator("#protocol").input_value() == protocol
        await speak_into(page, 9.0)
        if protocol != "vad_stream":
            await page.click("#stop")
        text = await finals_text(page)
        await page.screenshot(path=str(ARTIFACTS / f"demo-{protocol}.png"), full_page=True)
        assert wer(reference, text) <= 0.3, (text, console)
        assert "error" not in (await page.locator("#error").inner_text()).lower()
        if protocol == "vad_stream":
            events = await page.locator("#vad-events li").all_inner_texts()
            assert any("speech_start" in e for e in events), events
    finally:
        await browser.close()
        await pw.stop()


async def test_file_upload_progress_and_downloads(server, testdata):
    ARTIFACTS.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{server.ports['vad_stream.static']}/?protocol=file_transcription"
    pw, browser, page, console = await open_page(url, testdata / CLIP)
    try:
        await page.select_option("#file-format", "srt")
        await page.set_input_files("#file", str(testdata / CLIP))
        await page.click("#upload")
        await page.wait_for_function("document.querySelector('#task-status').textContent === 'done'",
                                     timeout=60000)
        assert await page.locator("#upload-progress").evaluate("e => e.value") == 100
        assert await page.locator("#task-progress").evaluate("e => e.value") == 100
        result = await page.locator("#file-result").inner_text()
        assert "-->" in result, result  # SRT cues
        assert wer(manifest()[CLIP]["transcript"], " ".join(
            line for line in result.splitlines() if line and "-->" not in line and not line.isdigit())) <= 0.3
        links = await page.locator("#downloads a").all_inner_texts()
        assert any("transcript.srt" in t for t in links) and any("transcript.json" in t for t in links)
        await page.screenshot(path=str(ARTIFACTS / "demo-file.png"), full_page=True)
    finally:
        await browser.close()
        await pw.stop()


async def test_speaker_registration_and_listing(server, testdata):
    url = f"http://127.0.0.1:{server.ports['vad_stream.static']}/?protocol=vad_stream"
    pw, browser, page, console = await open_page(url, testdata / CLIP)
    try:
        await page.fill("#user-id", "reader")
        await page.click("#register")  # records 5 s from the (fake) microphone
        await page.wait_for_function(
            "[...document.querySelectorAll('#speaker-events li')].some(li => li.textContent.includes('registered reader'))",
            timeout=30000)
        await page.click("#speaker-list")
        await page.wait_for_function(
            "[...document.querySelectorAll('#speaker-events li')].some(li => li.textContent.includes('speakers (1): reader'))",
            timeout=15000)
        await page.screenshot(path=str(ARTIFACTS / "demo-speakers.png"), full_page=True)
    finally:
        await browser.close()
        await pw.stop()


async def test_connection_errors_are_shown_in_plain_words(testdata, tmp_path):
    """The file protocol is not running on this server: the page says so in words."""
    ARTIFACTS.mkdir(exist_ok=True)
    hub = make_hub({"server": {"state_dir": str(tmp_path)}}, only=["vad_stream"])
    async with running_server(hub) as lonely:
        url = f"http://127.0.0.1:{lonely.ports['vad_stream.static']}/?protocol=file_transcription"
        pw, browser, page, console = await open_page(url, testdata / CLIP)
        try:
            await page.set_input_files("#file", str(testdata / CLIP))
            await page.click("#upload")
            await page.wait_for_function("document.querySelector('#error').textContent.length > 0",
                                         timeout=15000)
            assert "cannot reach" in await page.locator("#error").inner_text()
            await page.screenshot(path=str(ARTIFACTS / "demo-error.png"), full_page=True)
        finally:
            await browser.close()
            await pw.stop()

"""The demo page in a real browser: Debian's Chromium, headless, with a fake microphone that
plays a test recording, against a real asrhub server with every protocol a browser can reach.
The recognised text must show up on the page for each protocol; uploads show progress and give
SRT/VTT/JSON downloads; errors are shown in words; the token field appears when auth is on; the
page works at desktop and phone width. Screenshots go to tests/_artifacts/."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from pathlib import Path

import pytest
import pytest_asyncio

from asrhub.formats import MAX_CUE_S, MAX_LINE_WIDTH, width
from asrhub.testing import make_hub, manifest, running_server, wer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
CLIP = "en/pocketsphinx_librivox_ss01_0870.wav"
LIVE = ["ptt", "streaming_stt", "vad_stream", "session_broadcast", "funasr_runtime", "openai_api"]
PAGE_PROTOCOLS = [*LIVE, "file_transcription"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}}, only=[*PAGE_PROTOCOLS, "wyoming"])
    async with running_server(hub, preload=True) as srv:
        yield srv


def static_url(server, protocol: str, **query: str) -> str:
    """The page on the static port next to the VAD stream."""
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"http://127.0.0.1:{server.ports['vad_stream.static']}/?protocol={protocol}{extra}"


async def open_page(url: str, audio: Path, viewport: dict | None = None):
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={audio}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ])
    page = await browser.new_page(viewport=viewport or DESKTOP)
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
    await page.goto(url)
    await page.wait_for_function("document.body.dataset.ready === 'true'", timeout=15000)
    return pw, browser, page, console


async def speak_into(page, seconds: float) -> None:
    await page.click("#start")
    await page.wait_for_function("document.querySelector('#stop').disabled === false", timeout=20000)
    await asyncio.sleep(seconds)


async def finals_text(page, timeout: float = 30.0) -> str:
    await page.wait_for_function("document.querySelectorAll('#finals li').length > 0",
                                 timeout=timeout * 1000)
    await asyncio.sleep(1.0)
    return " ".join(await page.locator("#finals li .text").all_inner_texts())


async def error_text(page) -> str:
    return await page.locator("#error").inner_text()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("protocol", LIVE)
async def test_microphone_to_text_on_the_page(server, testdata, protocol):
    ARTIFACTS.mkdir(exist_ok=True)
    reference = manifest()[CLIP]["transcript"]
    if protocol == "ptt":  # the page as /test on the PTT port
        url = f"http://127.0.0.1:{server.ports['ptt']}/test"
    else:
        url = static_url(server, protocol)
    pw, browser, page, console = await open_page(url, testdata / CLIP)
    try:
        assert await page.locator("#protocol").input_value() == protocol
        assert await page.locator("#live-panel").is_visible()
        await speak_into(page, 9.0)
        level = await page.locator("#level").get_attribute("aria-valuenow")
        if protocol != "vad_stream":
            await page.click("#stop")
        text = await finals_text(page, timeout=60)
        await page.screenshot(path=str(ARTIFACTS / f"demo-{protocol}.png"), full_page=True)
        assert wer(reference, text) <= 0.3, (text, console)
        assert await error_text(page) == "", console
        # partials look different from finals
        styles = await page.evaluate("""() => {
            const s = (el) => { const c = getComputedStyle(el); return [c.fontStyle, c.color]; };
            return { partial: s(document.querySelector('#partial')),
                     final: s(document.querySelector('#finals li .text')) };
        }""")
        assert styles["partial"][0] == "italic" and styles["final"][0] == "normal", styles
        assert styles["partial"][1] != styles["final"][1], styles
        if protocol == "vad_stream":
            events = await page.locator("#vad-events li").all_inner_texts()
            assert any("speech_start" in e for e in events), events
        if protocol == "session_broadcast":  # every result carries its speaker, in colour
            chips = page.locator("#finals li .speaker")
            assert await chips.count() == await page.locator("#finals li").count()
        assert level is not None
        if protocol != "vad_stream":  # stopped: the microphone is off
            assert await page.locator("#level").get_attribute("aria-valuenow") == "0"
            assert await page.locator("#start").is_enabled()
    finally:
        await browser.close()
        await pw.stop()


async def test_the_level_meter_moves_with_the_voice(server, testdata):
    pw, browser, page, console = await open_page(static_url(server, "streaming_stt"), testdata / CLIP)
    try:
        await page.click("#start")
        await page.wait_for_function(
            "Number(document.querySelector('#level').getAttribute('aria-valuenow')) > 20", timeout=20000)
        assert re.fullmatch(r"-?\d+ dB", await page.locator("#level-db").inner_text())
        await page.click("#stop")
    finally:
        await browser.close()
        await pw.stop()


async def test_file_upload_progress_and_downloads(server, testdata):
    ARTIFACTS.mkdir(exist_ok=True)
    pw, browser, page, console = await open_page(static_url(server, "file_transcription"), testdata / CLIP)
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
            re.sub(r"<[^>]+>", "", line) for line in result.splitlines()
            if line and "-->" not in line and not line.isdigit())) <= 0.3
        links = await page.locator("#downloads a").all_inner_texts()
        assert any("transcript.srt" in t for t in links) and any("transcript.json" in t for t in links)
        assert any("transcript.vtt" in t for t in links)
        vtt = await download_text(page, "transcript.vtt")
        assert vtt.startswith("WEBVTT\n\n") and "-->" in vtt
        # the segments are shown with their speaker, in colour
        assert await page.locator("#file-segments li .speaker").count() >= 1
        await page.screenshot(path=str(ARTIFACTS / "demo-file.png"), full_page=True)
    finally:
        await browser.close()
        await pw.stop()


async def download_text(page, name: str) -> str:
    return await page.evaluate(
        "async (name) => { const a = [...document.querySelectorAll('#downloads a')]"
        ".find((x) => x.download === name); return await (await fetch(a.href)).text(); }", name)


def srt_cues(srt: str) -> list[tuple[float, float, list[str]]]:
    def seconds(clock: str) -> float:
        h, m, s = clock.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    cues = []
    for block in srt.strip().split("\n\n"):
        lines = block.split("\n")
        start, end = lines[1].split(" --> ")
        cues.append((seconds(start), seconds(end), lines[2:]))
    return cues


async def test_openai_upload_with_language_progress_and_subtitle_downloads(server, testdata):
    ARTIFACTS.mkdir(exist_ok=True)
    pw, browser, page, console = await open_page(static_url(server, "openai_api"), testdata / CLIP)
    try:
        assert await page.locator("#file-panel").is_visible() and await page.locator("#live-panel").is_visible()
        await page.select_option("#language", "en")
        await page.select_option("#file-format", "vtt")
        await page.set_input_files("#file", str(testdata / CLIP))
        await page.click("#upload")
        await page.wait_for_function("document.querySelector('#task-status').textContent === 'done'",
                                     timeout=60000)
        assert await error_text(page) == "", console
        assert await page.locator("#upload-progress").evaluate("e => e.value") == 100
        result = await page.locator("#file-result").inner_text()
        assert result.startswith("WEBVTT"), result
        srt = await download_text(page, "transcript.srt")
        cues = srt_cues(srt)
        assert cues
        for start, end, lines in cues:  # the server's readable cues, unchanged by the page
            assert 0 < end - start <= MAX_CUE_S and 1 <= len(lines) <= 2
            assert all(width(line) <= MAX_LINE_WIDTH for line in lines)
        text = " ".join(" ".join(lines) for _, _, lines in cues)
        assert wer(manifest()[CLIP]["transcript"], text) <= 0.3, text
        json_doc = await download_text(page, "transcript.json")
        assert '"segments"' in json_doc
        await page.screenshot(path=str(ARTIFACTS / "demo-openai-upload.png"), full_page=True)
    finally:
        await browser.close()
        await pw.stop()


async def test_speaker_registration_and_listing(server, testdata):
    pw, browser, page, console = await open_page(static_url(server, "vad_stream"), testdata / CLIP)
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


async def test_enrolled_speaker_is_named_in_colour(server, testdata):
    """A voice enrolled on the VAD stream is recognised by name on the session broadcast."""
    pw, browser, page, console = await open_page(static_url(server, "vad_stream"), testdata / CLIP)
    try:
        await page.fill("#user-id", "narrator")  # (another test may have enrolled "reader")
        await page.click("#register")
        await page.wait_for_function(
            "[...document.querySelectorAll('#speaker-events li')].some(li => li.textContent.includes('registered narrator'))",
            timeout=30000)
    finally:
        await browser.close()
        await pw.stop()
    pw, browser, page, console = await open_page(static_url(server, "session_broadcast"), testdata / CLIP)
    try:
        await speak_into(page, 9.0)
        await page.click("#stop")
        await finals_text(page, timeout=60)
        chips = page.locator("#finals li .speaker")
        names = await chips.all_inner_texts()
        assert names and {"narrator", "reader"} & set(names), (names, console)  # the same voice
        colour = await chips.first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert colour not in ("rgba(0, 0, 0, 0)", "rgb(74, 85, 104)"), colour  # a speaker colour
        await page.screenshot(path=str(ARTIFACTS / "demo-broadcast-speaker.png"), full_page=True)
    finally:
        await browser.close()
        await pw.stop()


async def test_services_list_every_protocol(server, testdata):
    pw, browser, page, console = await open_page(static_url(server, "ptt"), testdata / CLIP)
    try:
        items = await page.locator("#services li").all_inner_texts()
        for name in [*PAGE_PROTOCOLS, "wyoming"]:
            assert any(item.startswith(f"{name} — port {server.ports[name]}") for item in items), (name, items)
        assert any(i.startswith("wyoming") and "not reachable from a browser" in i for i in items)
        for name in PAGE_PROTOCOLS:  # every protocol the page drives can be chosen
            option = page.locator(f"#protocol option[value={name}]")
            assert not await option.is_disabled()
            assert str(server.ports[name]) in await option.inner_text()
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
            message = await error_text(page)
            assert "cannot reach" in message and "not enabled on this hub" in message, message
            await page.screenshot(path=str(ARTIFACTS / "demo-error.png"), full_page=True)
        finally:
            await browser.close()
            await pw.stop()


async def test_server_errors_are_shown_as_text(server, testdata, tmp_path):
    """A file that is not audio: the OpenAI API's own error message is on the page."""
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio at all\n" * 50)
    pw, browser, page, console = await open_page(static_url(server, "openai_api"), testdata / CLIP)
    try:
        await page.set_input_files("#file", str(junk))
        await page.click("#upload")
        await page.wait_for_function("document.querySelector('#error').textContent.length > 0",
                                     timeout=30000)
        message = await error_text(page)
        assert message.startswith("400:") and len(message) > 10, message
    finally:
        await browser.close()
        await pw.stop()


async def test_token_field_when_auth_is_on(testdata, tmp_path):
    hub = make_hub({"server": {"state_dir": str(tmp_path), "token": "s3cret-token"},
                    "engines": {"whisper": {"model": "tiny.en"}}}, only=["ptt", "streaming_stt"])
    async with running_server(hub, preload=True) as guarded:
        url = f"http://127.0.0.1:{guarded.ports['ptt']}/test?protocol=streaming_stt"
        pw, browser, page, console = await open_page(url, testdata / CLIP, viewport=PHONE)
        try:
            # the page and its assets load without the token; the page asks for it
            assert await page.locator("#token-row").is_visible()
            assert "token" in await error_text(page)
            await page.fill("#token", "wrong")
            await page.click("#token-apply")
            await page.wait_for_function("document.querySelector('#error').textContent.includes('refused')",
                                         timeout=10000)
            await page.fill("#token", "s3cret-token")
            await page.click("#token-apply")
            await page.wait_for_function("document.querySelectorAll('#services li').length === 2",
                                         timeout=10000)
            assert await error_text(page) == ""
            await page.screenshot(path=str(ARTIFACTS / "demo-token-phone.png"), full_page=True)
            await speak_into(page, 9.0)
            await page.click("#stop")
            text = await finals_text(page, timeout=60)
            assert wer(manifest()[CLIP]["transcript"], text) <= 0.3, (text, console)
            assert "s3cret-token" not in await page.locator("#endpoint").inner_text()
        finally:
            await browser.close()
            await pw.stop()


NEEDED = {  # what a user needs on screen, per panel
    "streaming_stt": ["#protocol", "#language", "#start", "#stop", "#level", "#level-db", "#error"],
    "file_transcription": ["#protocol", "#file", "#file-format", "#upload", "#upload-progress",
                           "#task-progress"],
    "openai_api": ["#protocol", "#language", "#start", "#level", "#file", "#file-format", "#upload"],
}


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_layout_at_desktop_and_phone_width(server, testdata, viewport):
    ARTIFACTS.mkdir(exist_ok=True)
    for protocol, selectors in NEEDED.items():
        pw, browser, page, console = await open_page(static_url(server, protocol), testdata / CLIP,
                                                     viewport=viewport)
        try:
            name = f"layout-{protocol}-{viewport['width']}.png"
            await page.screenshot(path=str(ARTIFACTS / name), full_page=True)
            shot_width, shot_height = png_size(ARTIFACTS / name)
            assert shot_width == viewport["width"], "the page is wider than the screen"
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{protocol}: {overflow}px of horizontal scrolling"
            for selector in selectors:
                box = await page.locator(selector).bounding_box()
                assert box is not None and await page.locator(selector).is_visible(), (protocol, selector)
                assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5, (protocol, selector, box)
                assert box["y"] + box["height"] <= shot_height, (protocol, selector)
                if selector in ("#start", "#stop", "#upload", "#protocol", "#language", "#file-format"):
                    assert box["height"] >= 28, (protocol, selector, box)  # big enough to tap
            assert not await page.locator("#token-row").is_visible()  # no auth on this hub
        finally:
            await browser.close()
            await pw.stop()

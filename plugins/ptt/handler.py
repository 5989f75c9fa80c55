"""The PTT adapter onto the protocol kit: the WebSocket route ``/ws/asr`` (the protocol itself
is :mod:`.session`, its wire format :mod:`.messages`) and the HTTP pages ``/``, ``/stats`` and
``/test`` (``/health`` and ``/metrics`` are the core's)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from asrhub.appkeys import PUBLIC_PREFIXES_KEY
from asrhub.paths import web_dir
from asrhub.protocol import Channel, ProtocolContext, WebSocketRoute
from asrhub.streaming import LiveRecognizer

from . import messages as m
from .session import PTTSession
from .stats import PTTStats

PROTOCOL = "ptt"
WS_PATH = "/ws/asr"
TEST_PATH = "/test"


def setup(ctx: ProtocolContext) -> None:
    hub = ctx.hub
    app = ctx.app
    assert app is not None
    stats = PTTStats()
    counters = hub.counter(ctx.name)
    connections_before = counters.connections_total
    recognizers: dict[bool, LiveRecognizer] = {}

    def open_session(channel: Channel, request: Any) -> PTTSession:
        settings = ctx.settings  # read per connection: a reload may have changed the limits
        stats.sessions_opened += 1
        if settings.vad not in recognizers:
            recognizers[settings.vad] = LiveRecognizer.for_hub(hub, use_vad=settings.vad)
        return PTTSession(channel, recognizers[settings.vad], settings, stats=stats,
                          observe_final=ctx.observe_final_latency)

    ctx.websocket(WebSocketRoute(
        path=WS_PATH, open_session=open_session, error_message=m.error_message, codes=m.CODES,
        usage='connect a WebSocket here; send {"type": "control", "command": "start"}, '
              '{"type": "audio", "data": "<base64 PCM int16 LE 16 kHz mono>"}, then '
              '{"type": "control", "command": "stop"}'))

    async def index(request: web.Request) -> web.Response:
        info = hub.service_info()
        if info.get("model") is None:  # not loaded yet: say what will be
            try:
                settings = hub.settings_for("asr", hub.engine_name("asr"))
                info["model"] = getattr(settings, "model", None)
            except Exception:  # noqa: BLE001 - informative only
                pass
        ok, why = hub.health()
        info.update({"protocol": PROTOCOL, "websocket": WS_PATH, "status": "ok" if ok else why,
                     "audio": {"sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le",
                               "transport": "base64 in JSON"},
                     "endpoints": {"websocket": WS_PATH, "health": "/health", "stats": "/stats",
                                   "test": TEST_PATH, "metrics": "/metrics"}})
        return web.json_response(info)

    async def stats_page(request: web.Request) -> web.Response:
        body = stats.snapshot()
        executor = dataclasses.asdict(ctx.executor.stats())
        seen = counters.connections_total - connections_before
        body.update({
            "protocol": PROTOCOL,
            "uptime_s": round(hub.uptime(), 1),
            # rejected: refused by max_connections / max_connections_per_peer (never opened)
            "connections": {"open": counters.connections_open, "total": counters.connections_total,
                            "rejected": max(0, seen - stats.sessions_opened)},
            "errors": dict(sorted(counters.errors.items())),
            "sessions": body.pop("utterances"),
            "queue_depth": executor["queue_depth"],
            "executor": executor,
            "event_loop_lag_ms": ctx.loop_lag.summary_ms(),
        })
        return web.json_response(body)

    app.router.add_get("/", index)
    app.router.add_get("/stats", stats_page)
    # The seed's test page is GET /test itself (200, HTML): the shared demo page (web/), which
    # opens on the ptt protocol by default. Its relative assets resolve under /test/ through a
    # <base> element, and /test/ serves the same page.
    app.router.add_get(TEST_PATH, test_page)
    app.router.add_get(TEST_PATH + "/", test_page)
    app.router.add_static(TEST_PATH + "/", web_dir())
    # The page and its assets load without a token; the page sends the token on the socket.
    app[PUBLIC_PREFIXES_KEY] = (TEST_PATH,)


_page_cache: dict[str, str] = {}


async def test_page(request: web.Request) -> web.Response:
    path = web_dir() / "index.html"
    key = f"{path}:{path.stat().st_mtime_ns}"
    page = _page_cache.get(key)
    if page is None:
        html = path.read_text(encoding="utf-8")
        base = f'<base href="{TEST_PATH}/">'
        page = html.replace("<head>", "<head>\n  " + base, 1) if "<head>" in html else base + html
        _page_cache.clear()
        _page_cache[key] = page
    return web.Response(text=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})

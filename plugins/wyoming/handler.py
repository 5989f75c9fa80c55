"""The adapter: a framed TCP route for the core's transport, sessions built per connection."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from wyoming.event import Event

from asrhub.protocol import ErrorCodes, ProtocolContext, ProtocolError, TcpRoute

from . import messages as m
from .catalog import Catalog
from .session import WyomingSession
from .settings import WyomingSettings

log = structlog.get_logger("asrhub.wyoming")

CODES = ErrorCodes(bad_message=m.BAD_EVENT, too_big=m.TOO_BIG, busy=m.SERVER_BUSY,
                   internal=m.INTERNAL_ERROR, too_many_connections=m.TOO_MANY_CONNECTIONS)


def setup(ctx: ProtocolContext) -> None:
    settings: WyomingSettings = ctx.settings
    catalog = Catalog(ctx.hub, settings)
    if ctx.listener.token:
        log.warning("token_not_applied", protocol=ctx.name,
                    hint="the Wyoming protocol has no authentication: the token guards the "
                         "HTTP listeners only; bind this one to a trusted network")

    async def read_message(reader: asyncio.StreamReader, max_message_bytes: int) -> Event | None:
        read = m.read_event(reader, max_message_bytes, settings.max_header_bytes)
        if not settings.idle_timeout_s:
            return await read
        try:
            return await asyncio.wait_for(read, settings.idle_timeout_s)
        except TimeoutError:
            raise ProtocolError(m.IDLE_TIMEOUT, f"no event for {settings.idle_timeout_s:g} s") from None

    def open_session(channel: Any, peer: Any) -> WyomingSession:
        return WyomingSession(channel, catalog, settings,
                              observe_final_latency=ctx.observe_final_latency)

    ctx.serve_tcp(TcpRoute(read_message=read_message, open_session=open_session,
                           error_message=lambda err: m.error_event(err.code, err.message),
                           codes=CODES))

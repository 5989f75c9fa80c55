"""Typed keys for shared state on each listener's ``web.Application``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from asrhub.hub import Hub, Listener

HUB_KEY: web.AppKey[Hub] = web.AppKey("asrhub_hub")
LISTENER_KEY: web.AppKey[Listener] = web.AppKey("asrhub_listener")

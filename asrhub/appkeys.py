"""Typed keys for shared state on each listener's ``web.Application`` (and one per request)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from asrhub.hub import Hub, Listener
    from asrhub.protocol import Credential, ProtocolContext

HUB_KEY: web.AppKey[Hub] = web.AppKey("asrhub_hub")
LISTENER_KEY: web.AppKey[Listener] = web.AppKey("asrhub_listener")
CONTEXT_KEY: web.AppKey[ProtocolContext] = web.AppKey("asrhub_context")
# Path prefixes a listener serves without a token (the demo page's static assets).
PUBLIC_PREFIXES_KEY: web.AppKey[tuple[str, ...]] = web.AppKey("asrhub_public_prefixes")
# How a listener words the core's refusals (401 token, 403 origin) in its protocol's own error
# shape: (status, code, message) -> response. Without it the core's JSON shape is used.
REFUSAL_KEY: web.AppKey[Callable[[int, str, str], web.StreamResponse]] = web.AppKey("asrhub_refusal")
# Which credential the guard accepted for a request (see asrhub.protocol.credential_of).
CREDENTIAL_KEY: web.RequestKey[Credential] = web.RequestKey("asrhub_credential")

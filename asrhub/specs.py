"""Plain specs that ``asrhub_register_*`` hooks return.

The hub turns them into lookup tables once at start-up; nothing here imports aiohttp
handlers or models, so a plugin can be listed (``asrhub plugins``) without loading anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from asrhub.hub import Hub
    from asrhub.protocol import ProtocolContext


@dataclass(frozen=True)
class NoSettings:
    """Settings class for a plugin that takes none."""


@dataclass(frozen=True)
class ProtocolSpec:
    """A wire protocol served on a listener of its own.

    ``setup(ctx)`` is called once per start with a complete
    :class:`asrhub.protocol.ProtocolContext`: the hub, the protocol's settings (an instance of
    ``settings_class`` built from ``[protocols.<name>]``, minus the listener keys the core owns:
    enabled, host, port, token, tls_cert, tls_key, allowed_origins), the executor, metrics and,
    for ``transport="http"``, a fresh aiohttp application ``ctx.app`` to add routes to
    (``ctx.websocket(route)`` for a WebSocket protocol). A ``transport="tcp"`` protocol calls
    ``ctx.serve_tcp(route)`` instead. ``settings_class`` should inherit
    :class:`asrhub.protocol.ListenerSettings` (the shared limits).
    """

    name: str
    default_port: int
    description: str
    setup: Callable[[ProtocolContext], None]
    settings_class: type = NoSettings
    enabled_by_default: bool = True
    transport: Literal["http", "tcp"] = "http"
    # Extra listeners (e.g. a static site next to a WebSocket port): name -> default port.
    # Each gets its own context (``ctx.extra`` is the name) and is set up by
    # ``setup_extra(ctx)``; its section is ``[protocols.<name>.<extra_name>]`` (listener keys).
    extra_ports: dict[str, int] = field(default_factory=dict)
    setup_extra: Callable[[ProtocolContext], None] | None = None
    # True when a client must keep reaching the same instance behind a load balancer (its
    # state lives in that instance): ``asrhub haproxy-config`` then balances by source address.
    instance_affinity: bool = False
    # Engine kinds ("speaker", "voiceprints", "denoise", ...) to load before the server reports
    # ready, given the protocol's settings; the default ASR and VAD engines always are.
    preload: Callable[[Any], Iterable[str]] | None = None
    # Checks that need the hub (e.g. "the engines these settings name exist"): ``check(settings,
    # hub)`` raises ValueError; run for an enabled listener when the hub is built, so
    # ``check-config`` refuses exactly what ``serve`` would. Settings-only checks go in the
    # settings class's ``validate()``.
    check: Callable[[Any, Hub], None] | None = None


@dataclass(frozen=True)
class EngineSpec:
    """A loadable engine (ASR, VAD, speaker embedding, noise suppression, voiceprint store).

    ``factory(settings, hub)`` builds the engine; it is called once, in the inference executor,
    and the result is shared by every protocol. ``settings`` is an instance of
    ``settings_class`` built from ``[engines.<name>]``.
    """

    name: str
    description: str
    factory: Callable[[Any, Hub], Any]
    settings_class: type = NoSettings

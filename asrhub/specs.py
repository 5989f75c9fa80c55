"""Plain specs that ``asrhub_register_*`` hooks return.

The hub turns them into lookup tables once at start-up; nothing here imports aiohttp
handlers or models, so a plugin can be listed (``asrhub plugins``) without loading anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from asrhub.hub import Hub


@dataclass(frozen=True)
class NoSettings:
    """Settings class for a plugin that takes none."""


@dataclass(frozen=True)
class ProtocolSpec:
    """A wire protocol served on a listener of its own.

    ``setup(app, hub, settings)`` adds routes to a fresh ``web.Application`` that the core
    creates for this listener; ``settings`` is an instance of ``settings_class`` built from the
    ``[protocols.<name>]`` section (minus the listener keys the core owns: enabled, host, port,
    token, tls_cert, tls_key, allowed_origins).
    """

    name: str
    default_port: int
    description: str
    setup: Callable[[web.Application, Hub, Any], None]
    settings_class: type = NoSettings
    enabled_by_default: bool = True
    # Extra listeners (e.g. a static site next to a WebSocket port): name -> default port.
    # Each gets its own application, set up by ``setup_extra(app, hub, settings, extra_name)``;
    # its section is ``[protocols.<name>.<extra_name>]`` (listener keys only).
    extra_ports: dict[str, int] = field(default_factory=dict)
    setup_extra: Callable[[web.Application, Hub, Any, str], None] | None = None
    # Engine kinds ("speaker", "voiceprints", "denoise", ...) to load before the server reports
    # ready, given the protocol's settings; the default ASR and VAD engines always are.
    preload: Callable[[Any], Iterable[str]] | None = None


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

"""Zeroconf (mDNS) announcement of the Wyoming listener, so Home Assistant discovers it.

Off by default (``[protocols.wyoming] zeroconf = true`` turns it on): it sends multicast on
the local network. The record is the one wyoming-faster-whisper announces: service type
``_wyoming._tcp.local.``, instance ``<name>._wyoming._tcp.local.``, the listener's address and
port. :func:`service_info` builds it without sending anything (tests check it that way).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from typing import TYPE_CHECKING, Any

import structlog

from .settings import WyomingSettings

if TYPE_CHECKING:
    from zeroconf import ServiceInfo

    from asrhub.hub import Hub

log = structlog.get_logger("asrhub.wyoming")

SERVICE_TYPE = "_wyoming._tcp.local."
# Any multicast address works for learning the default route's source address: connect() on a
# UDP socket only picks a route, it sends nothing.
_ROUTE_PROBE = ("224.0.0.251", 5353)

_announcers: weakref.WeakKeyDictionary[Hub, Announcer] = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task] = set()


def service_name(settings: WyomingSettings) -> str:
    name = settings.zeroconf_name or f"asrhub-{socket.gethostname().split('.')[0]}"
    return name[:63]


def announce_address(settings: WyomingSettings, listener_host: str) -> str:
    """The address to announce: configured, else the listener's own when it is one specific
    address, else the source address of the default route."""
    for candidate in (settings.zeroconf_host, listener_host):
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if not address.is_unspecified:
            return str(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)
        probe.connect(_ROUTE_PROBE)
        return str(probe.getsockname()[0])


def service_info(name: str, address: str, port: int) -> ServiceInfo:
    """The zeroconf record for ``name`` at ``address``:``port`` (built, not registered)."""
    from zeroconf import ServiceInfo

    return ServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}",
                       addresses=[ipaddress.ip_address(address).packed], port=port,
                       server=f"{name}.local.")


class Announcer:
    def __init__(self, info: ServiceInfo) -> None:
        self.info = info
        self._zeroconf: Any = None

    async def start(self) -> None:
        from zeroconf.asyncio import AsyncZeroconf

        self._zeroconf = AsyncZeroconf()
        await self._zeroconf.async_register_service(self.info)
        log.info("zeroconf_announced", service=self.info.name, port=self.info.port,
                 addresses=self.info.parsed_addresses())

    async def stop(self) -> None:
        if self._zeroconf is not None:
            zeroconf, self._zeroconf = self._zeroconf, None
            await zeroconf.async_unregister_service(self.info)
            await zeroconf.async_close()


def start_announcing(hub: Hub, protocol: str) -> None:
    """Called at start-up, once the listener is bound: announce it if the settings say so."""
    try:
        listener = hub.listener(protocol)
    except KeyError:
        return
    settings = listener.settings
    if not listener.config.enabled or not isinstance(settings, WyomingSettings) or not settings.zeroconf:
        return
    port = hub.bound_ports.get(protocol, listener.config.port)
    info = service_info(service_name(settings), announce_address(settings, listener.config.host), port)
    announcer = _announcers[hub] = Announcer(info)
    _spawn(announcer.start(), "zeroconf_failed")


def stop_announcing(hub: Hub) -> None:
    announcer = _announcers.pop(hub, None)
    if announcer is not None:
        _spawn(announcer.stop(), "zeroconf_unregister_failed")


def _spawn(coro: Any, failure: str) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)

    def done(task: asyncio.Task) -> None:
        _tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(failure, error=repr(task.exception()))

    task.add_done_callback(done)

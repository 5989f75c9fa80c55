"""The zeroconf record the hub would announce, built and checked without announcing it (no
multicast leaves this machine), and no announcer when the setting is off (the default)."""

from __future__ import annotations

import socket

from asrhub.testing import make_hub, running_server
from asrhub_plugins.wyoming import discovery
from asrhub_plugins.wyoming.settings import WyomingSettings


def test_the_service_record_home_assistant_discovers():
    settings = WyomingSettings(zeroconf=True, zeroconf_name="kitchen-hub",
                               zeroconf_host="192.168.1.20")
    name = discovery.service_name(settings)
    address = discovery.announce_address(settings, "0.0.0.0")
    info = discovery.service_info(name, address, 10300)
    assert info.type == "_wyoming._tcp.local."
    assert info.name == "kitchen-hub._wyoming._tcp.local."
    assert info.port == 10300
    assert info.parsed_addresses() == ["192.168.1.20"]
    assert info.server == "kitchen-hub.local."


def test_name_and_address_defaults():
    settings = WyomingSettings()
    assert discovery.service_name(settings) == f"asrhub-{socket.gethostname().split('.')[0]}"[:63]
    # a listener bound to one address announces that address
    assert discovery.announce_address(settings, "10.1.2.3") == "10.1.2.3"
    assert discovery.announce_address(WyomingSettings(zeroconf_host="fd00::5"), "::") == "fd00::5"
    info = discovery.service_info("x", "fd00::5", 10400)
    assert info.parsed_addresses() == ["fd00::5"]


async def test_no_announcer_unless_asked():
    hub = make_hub({}, only=["wyoming"])
    async with running_server(hub):
        assert hub not in discovery._announcers
    assert not discovery._tasks

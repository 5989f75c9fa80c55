"""deploy/haproxy.cfg is what `asrhub haproxy-config` writes for the default config, and HAProxy
accepts it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from asrhub.config import parse_config
from asrhub.deploy import for_hub
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def default_hub() -> Hub:
    return Hub(parse_config({}), make_plugin_manager())


def test_shipped_haproxy_config_is_current():
    assert SHIPPED.read_text() == for_hub(default_hub()), \
        "regenerate: .venv/bin/asrhub haproxy-config --config /dev/null > deploy/haproxy.cfg"


def test_every_listener_has_a_frontend_and_three_checked_servers():
    text = for_hub(default_hub())
    for lst in default_hub().enabled_listeners():
        name = lst.label.replace(".", "_")
        assert f"frontend {name}\n" in text and f"bind 0.0.0.0:{lst.config.port}" in text
        backend = text.split(f"backend {name}_instances\n", 1)[1].split("\n\n", 1)[0]
        servers = [line for line in backend.splitlines() if line.strip().startswith("server ")]
        assert [s.split()[2] for s in servers] == [f"127.0.0.1:{lst.config.port + 1000 * i}"
                                                    for i in (1, 2, 3)]
        assert all(s.endswith(" check") for s in servers)
        if lst.spec.transport == "tcp":
            assert "mode tcp" in backend and "httpchk" not in backend
        else:
            assert "http-check send meth GET uri /health" in backend


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_the_shipped_config():
    result = subprocess.run(["haproxy", "-c", "-f", str(SHIPPED)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

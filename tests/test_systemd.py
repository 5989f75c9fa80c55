"""The systemd unit verifies, and the server runs the way the unit runs it (Type=notify)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from asrhub.testing import free_port, make_hub

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "asrhub.service"
VENV_BIN = Path(sys.executable).parent


def unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit with /opt/asrhub (where the README installs it) pointed at this checkout."""
    text = UNIT.read_text().replace("/opt/asrhub/.venv/bin", str(VENV_BIN)).replace("/opt/asrhub", str(REPO))
    path = tmp_path / "asrhub.service"
    path.write_text(text)
    return path


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(unit_for_this_checkout(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "asrhub.service" not in result.stderr, result.stderr


def test_unit_has_the_required_settings():
    service = read_unit()["Service"]
    assert service["Type"] == "notify"
    assert service["StateDirectory"] == "asrhub"
    assert service["ConfigurationDirectory"] == "asrhub"
    assert service["Restart"] == "on-failure"
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert hardening in service
    assert int(service["TimeoutStopSec"]) > 2 * 10, "stop timeout must exceed the graceful drain"


def test_serves_like_the_unit_with_notify_socket(tmp_path):
    """Same command line as ExecStart, the unit's environment, a real NOTIFY_SOCKET."""
    confdir, statedir = tmp_path / "etc", tmp_path / "state"
    confdir.mkdir()
    statedir.mkdir()
    probe = make_hub({})
    ports = {}
    lines = ['[server]', 'host = "127.0.0.1"', 'log_format = "json"', '',
             '[engines.whisper]', 'model = "tiny.en"', '']
    for name, spec in probe.protocols.items():
        ports[name] = free_port()
        lines += [f"[protocols.{name}]", f"port = {ports[name]}"]
        for extra in spec.extra_ports:
            ports[f"{name}.{extra}"] = free_port()
            lines += [f"[protocols.{name}.{extra}]", f"port = {ports[f'{name}.{extra}']}"]
        lines.append("")
    (confdir / "asrhub.toml").write_text("\n".join(lines))

    service = read_unit()["Service"]
    env = dict(os.environ, CONFIGURATION_DIRECTORY=str(confdir), STATE_DIRECTORY=str(statedir),
               HOME=str(statedir), PYTHONUNBUFFERED="1", WATCHDOG_USEC="2000000")
    command = service["ExecStart"].replace("/opt/asrhub/.venv/bin", str(VENV_BIN))
    command = command.replace("${CONFIGURATION_DIRECTORY}", str(confdir))
    argv = shlex.split(command)

    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(1.0)
        env["NOTIFY_SOCKET"] = str(notify_path)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            messages = []
            deadline = time.monotonic() + 180
            while not any("READY=1" in m for m in messages):
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "no READY=1 within 180 s"
                try:
                    messages.append(notify.recv(4096).decode())
                except TimeoutError:
                    pass
            # ready means: every port listens and answers
            for label, port in ports.items():
                if probe.protocols[label.split(".")[0]].transport == "tcp":  # no HTTP there
                    socket.create_connection(("127.0.0.1", port), timeout=10).close()
                    continue
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
                    assert resp.status == 200, label
            # the watchdog is pinged while healthy
            got_watchdog = False
            for _ in range(5):
                try:
                    got_watchdog = "WATCHDOG=1" in notify.recv(4096).decode()
                except TimeoutError:
                    continue
                if got_watchdog:
                    break
            assert got_watchdog
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=int(service["TimeoutStopSec"])) == 0
            rest = []
            while True:
                try:
                    rest.append(notify.recv(4096).decode())
                except (TimeoutError, BlockingIOError):
                    break
            assert any("STOPPING=1" in m for m in rest)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_example_config_is_valid_and_complete():
    """systemd/asrhub.toml validates and names every setting `asrhub default-config` knows."""
    import tomllib

    from asrhub.cli import default_config_document
    from asrhub.config import load_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager

    example = REPO / "systemd" / "asrhub.toml"
    hub = Hub(load_config(example), make_plugin_manager())
    assert all(lst.config.enabled for lst in hub.listeners)
    data = tomllib.loads(example.read_text())

    def keys(doc, prefix=""):
        for key, value in doc.items():
            if isinstance(value, dict) and value:
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    missing = set(keys(default_config_document())) - set(keys(data))
    assert not missing, f"regenerate systemd/asrhub.toml: missing {sorted(missing)}"

"""``systemctl reload asrhub`` runs the unit's ExecReload (SIGHUP to the main PID). A real
``asrhub serve`` re-reads its config, applies tokens and limits at once, keeps open connections,
tells systemd RELOADING=1 then READY=1, and keeps running; a broken edit is logged, not fatal."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from asrhub.testing import free_port, make_hub

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "asrhub.service"

pytestmark = pytest.mark.slow


def config_text(port: int, state: Path, token: str, disabled: list[str], extra: str = "") -> str:
    lines = ["[server]", 'host = "127.0.0.1"', 'log_format = "json"', "preload = false",
             f'state_dir = "{state}"', f'token = "{token}"', extra, ""]
    lines += ["[protocols.ptt]", f"port = {port}", ""]
    lines += [f"[protocols.{name}]\nenabled = false\n" for name in disabled]
    return "\n".join(lines)


def status(port: int, token: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health?token={token}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_systemctl_reload_applies_token_and_survives_a_bad_edit(tmp_path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    reload_cmd = parser["Service"]["ExecReload"]
    assert "HUP" in reload_cmd

    port = free_port()
    disabled = [name for name in make_hub({}).protocols if name != "ptt"]
    config = tmp_path / "asrhub.toml"
    config.write_text(config_text(port, tmp_path / "state", "first", disabled))
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.5)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1")
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "asrhub.cli", "serve", "--config", str(config)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)

        def messages() -> list[str]:
            got = []
            while True:
                try:
                    got.append(notify.recv(4096).decode())
                except (TimeoutError, BlockingIOError):
                    return got

        def systemctl_reload() -> None:
            argv = shlex.split(reload_cmd.replace("$MAINPID", str(proc.pid)))
            subprocess.run(argv, check=True, timeout=10)

        try:
            wait_for(lambda: any("READY=1" in m for m in messages()) or proc.poll() is not None, 120)
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert status(port, "first") == 200 and status(port, "second") == 401

            config.write_text(config_text(port, tmp_path / "state", "second", disabled))
            systemctl_reload()
            wait_for(lambda: status(port, "second") == 200)
            assert status(port, "first") == 401
            seen = " ".join(messages())
            assert "RELOADING=1" in seen and "READY=1" in seen
            assert proc.poll() is None

            # An edit that does not validate: logged, the running config stays, no exit.
            config.write_text(config_text(port, tmp_path / "state", "third", disabled,
                                          extra="no_such_setting = 1"))
            systemctl_reload()
            time.sleep(1.0)
            assert proc.poll() is None and status(port, "second") == 200
            logged = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()
                      if line.startswith("{")]
            events = [entry.get("event") for entry in logged]
            assert "reloaded" in events and "reload_failed" in events
            failed = next(e for e in logged if e.get("event") == "reload_failed")
            assert "no_such_setting" in failed["error"]

            proc.send_signal(15)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()

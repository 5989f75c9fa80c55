"""A real cluster on loopback for the tests: redis-server, HAProxy (its configuration from
``asrhub.deploy``, what ``asrhub haproxy-config`` ships) and ``asrhub serve`` instances.

Used by tests/test_cluster.py (voiceprints) and tests/test_cluster_files.py (file tasks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from asrhub.deploy import Route, haproxy_config
from asrhub.testing import free_port

HAVE_CLUSTER_TOOLS = bool(shutil.which("redis-server") and shutil.which("haproxy"))
NO_CLUSTER_TOOLS = "redis-server and haproxy (make system-deps) not installed"


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_until(lambda: redis.Redis(port=self.port).ping(), 20, "redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Instance:
    """``asrhub serve`` with its own config and state directory; ``protocol`` is the listener
    it serves (its port is ``self.port``), ``settings`` lines go under its section,
    ``sections`` are more config lines."""

    def __init__(self, tmp: Path, name: str, redis_url: str, disabled: list[str], *,
                 protocol: str = "vad_stream", settings: Sequence[str] = ("[protocols.vad_stream.static]",
                                                                        "enabled = false"),
                 sections: Sequence[str] = ("[engines]", 'voiceprints = "redis"',
                                            "[engines.whisper]", 'model = "tiny.en"')) -> None:
        self.name = name
        self.port = free_port()
        self.dir = tmp / name
        self.dir.mkdir()
        self.config = self.dir / "asrhub.toml"
        lines = ["[server]", 'host = "127.0.0.1"', 'log_format = "json"', f'state_dir = "{self.dir}"',
                 "[cluster]", f'redis_url = "{redis_url}"', f'instance_id = "{name}"',
                 "health_interval_s = 0.5", *sections,
                 f"[protocols.{protocol}]", f"port = {self.port}", *settings]
        lines += [f"[protocols.{n}]\nenabled = false" for n in disabled]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.dir / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "asrhub.cli", "serve", "--config",
                                      str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        assert self.alive(), self.log()
        return http_json(f"http://127.0.0.1:{self.port}/health")["status"] == "ok"

    def log(self, tail: int = 3000) -> str:
        return (self.dir / "serve.log").read_text(errors="replace")[-tail:]

    def events(self, name: str) -> list[dict]:
        """The JSON log lines of this instance with ``"event": name``."""
        found = []
        for line in (self.dir / "serve.log").read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == name:
                        found.append(record)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class HAProxy:
    """HAProxy in front of ``backends`` (the instances' ports for route ``name``), with an admin
    socket for the runtime API (``set_state``: drain a server, as an operator would)."""

    def __init__(self, tmp: Path, backends: list[int], name: str = "vad_stream") -> None:
        self.port = free_port()
        self.name = name
        self.cfg = tmp / f"haproxy-{name}.cfg"
        self.socket = tmp / f"haproxy-{name}.sock"
        config = haproxy_config([Route(name, self.port, backends)], bind="127.0.0.1",
                                check_interval_ms=300)
        config = config.replace("global\n", f"global\n    stats socket {self.socket} mode 600 level admin\n", 1)
        self.cfg.write_text(config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        check = subprocess.run(["haproxy", "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.socket.exists, 10, "haproxy's admin socket")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def set_state(self, server: int, state: str) -> None:
        """``server``: 1-based index of the instance in the backend; ``state``: ready, drain."""
        reply = self.command(f"set server {self.name}_instances/asrhub{server} state {state}")
        assert not reply.strip(), reply

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

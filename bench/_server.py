"""A real ``asrhub serve`` child process for the stability benches (bench/fuzz.py, bench/soak.py):
every protocol on free loopback ports, its own temporary state_dir, a JSON log file; RSS, open
fds and the error-level lines of its log read from outside, as an operator would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Run as a script, bench/ is sys.path[0] and bench/wyoming.py would shadow the wyoming package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from asrhub.testing import free_port  # noqa: E402

PROTOCOLS = ["ptt", "streaming_stt", "vad_stream", "file_transcription", "session_broadcast",
             "openai_api", "funasr_runtime", "wyoming"]


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def load_avg() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@dataclass
class LogScan:
    lines: int = 0
    by_level: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # error-level lines (first few kept)
    error_count: int = 0
    tracebacks: int = 0
    not_json: int = 0


def scan_log(path: Path, keep: int = 10) -> LogScan:
    scan = LogScan()
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            scan.lines += 1
            if "Traceback (most recent call last)" in line:
                scan.tracebacks += 1
            try:
                record = json.loads(line)
            except ValueError:
                scan.not_json += 1
                continue
            level = str(record.get("level", "?")) if isinstance(record, dict) else "?"
            scan.by_level[level] = scan.by_level.get(level, 0) + 1
            if level in ("error", "critical", "exception"):
                scan.error_count += 1
                if len(scan.errors) < keep:
                    scan.errors.append(line.strip()[:600])
            elif isinstance(record, dict) and "exception" in record:
                scan.tracebacks += 1
    return scan


@dataclass
class AsrhubServer:
    """``asrhub serve`` with every protocol; ``extra`` lines are appended to the config."""

    model: str = "tiny.en"
    extra: dict[str, list[str]] = field(default_factory=dict)  # protocol -> extra lines
    server_lines: list[str] = field(default_factory=list)
    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="asrhub-bench-")))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.state / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def write_config(self) -> Path:
        self.ports = {name: free_port() for name in PROTOCOLS}
        lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{self.state / "state"}"',
                 'log_format = "json"', *self.server_lines, "",
                 "[engines.whisper]", f'model = "{self.model}"', ""]
        for name in PROTOCOLS:
            lines += [f"[protocols.{name}]", "enabled = true", f"port = {self.ports[name]}",
                      *self.extra.get(name, [])]
            if name == "vad_stream":
                lines += ["[protocols.vad_stream.static]", f"port = {free_port()}"]
            lines.append("")
        config = self.state / "asrhub.toml"
        config.write_text("\n".join(lines))
        return config

    def start(self, timeout: float = 300) -> None:
        config = self.write_config()
        exe = shutil.which("asrhub", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "asrhub.cli"]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([*cmd, "serve", "--config", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['ptt']}/health",
                                            timeout=2) as resp:
                    if resp.status == 200 and '"event": "ready"' in self.log_path.read_text():
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['ptt']}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), the exit code; killed if it does not exit in 60 s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)

#!/usr/bin/env python3
"""Install the peers the benches compare asrhub with, each in its own virtualenv under
bench/_work/ (git-ignored), reproducibly from the package registry: nothing of a peer's code is
committed here.

WhisperLive (github.com/collabora/WhisperLive) as ../shared/peers/README.md says: torch 2.13.0
first (the machine's local CPU build; an open range pulls CUDA wheels), then
``whisper-live==0.10.0`` with ``--no-deps`` plus only what its faster_whisper server path
imports (a plain install pulls CUDA and OpenVINO wheels). Its server script, ``run_server.py``
(not in the wheel), is ../shared/peers/whisperlive/run_server.py; :func:`whisperlive_command`
builds the command line that starts it.

    .venv/bin/python bench/peers.py             # install (idempotent), then check the imports
    make bench-peers                            # the same
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
WHISPERLIVE_VENV = WORK / "wl-venv"
WHISPERLIVE_VERSION = "0.10.0"
WHISPERLIVE_SERVER = ROOT.parent / "shared" / "peers" / "whisperlive" / "run_server.py"
# whisper-live 0.10.0 pins faster-whisper 1.2.0 and tokenizers 0.20.3; the others are what its
# faster_whisper server path imports (server.py, backend/, transcriber/, vad.py, utils.py).
WHISPERLIVE_DEPS = [
    "faster-whisper==1.2.0", "tokenizers==0.20.3", "websockets", "onnxruntime", "numpy<2.5",
    "scipy", "av", "fastapi", "uvicorn", "soundfile",
]
TORCH = "torch==2.13.0"
# The server's own imports, checked after the install.
WHISPERLIVE_IMPORTS = ("whisper_live.server", "whisper_live.backend.faster_whisper_backend")


def whisperlive_python() -> Path:
    return WHISPERLIVE_VENV / "bin" / "python"


def whisperlive_installed() -> bool:
    stamp = WHISPERLIVE_VENV / f".whisper-live-{WHISPERLIVE_VERSION}"
    return stamp.exists() and whisperlive_python().exists()


def ensure_whisperlive(quiet: bool = True) -> Path:
    """Create bench/_work/wl-venv with WhisperLive (once); return its python."""
    if whisperlive_installed():
        return whisperlive_python()
    q = ["-q"] if quiet else []
    if not whisperlive_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(WHISPERLIVE_VENV)], check=True)
    pip = [str(whisperlive_python()), "-m", "pip", "install", *q]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "--no-deps", f"whisper-live=={WHISPERLIVE_VERSION}"], check=True)
    subprocess.run([*pip, *WHISPERLIVE_DEPS], check=True)
    check = "; ".join(f"import {name}" for name in WHISPERLIVE_IMPORTS)
    subprocess.run([str(whisperlive_python()), "-c", check], check=True)
    (WHISPERLIVE_VENV / f".whisper-live-{WHISPERLIVE_VERSION}").touch()
    return whisperlive_python()


def whisperlive_command(port: int, model_dir: Path, omp_threads: int, single_model: bool,
                        max_clients: int, batch: bool = False) -> list[str]:
    """run_server.py's command line (loopback, faster_whisper backend, a local model dir)."""
    cmd = [str(whisperlive_python()), str(WHISPERLIVE_SERVER), "--host", "127.0.0.1",
           "--port", str(port), "--backend", "faster_whisper",
           "--faster_whisper_custom_model_path", str(model_dir),
           "--omp_num_threads", str(omp_threads), "--max_clients", str(max_clients),
           "--max_connection_time", "3600"]
    if not single_model:
        cmd.append("--no_single_model")
    if batch:
        cmd.append("--batch_inference")
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args()
    python = ensure_whisperlive(quiet=not args.verbose)
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                              "print(*(f'{p} {m.version(p)}' for p in ('whisper-live', "
                              "'faster-whisper', 'ctranslate2', 'torch')), sep=', ')"],
                             check=True, capture_output=True, text=True).stdout.strip()
    print(f"WhisperLive ready in {WHISPERLIVE_VENV}: {version}")
    print(f"server script: {WHISPERLIVE_SERVER}")


if __name__ == "__main__":
    main()

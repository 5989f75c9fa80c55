#!/usr/bin/env python3
"""Memory of long files: idle vs peak RSS through the three file paths, side by side.

Builds a long recording (``asrhub.testing.long_recording``: the testdata clips with human
transcripts, in turn, with pauses; written under bench/_work/, git-ignored, reused when present)
and transcribes it through:

  cli       ``asrhub transcribe FILE`` (a fresh process; peak = the child's ru_maxrss)
  8767      ``asrhub serve`` with file_transcription (default settings: VAD + diarization), the
            seed's own client (tests/plugins/file_transcription/funasr_client.py, chunked upload)
  openai    ``asrhub serve`` with openai_api, the official ``openai`` SDK
            (``audio.transcriptions.create``, response_format=json; ``max_body_bytes`` raised
            so a 3-hour WAV fits)
  whole     (files of at most 30 min only, ``--whole``) the pre-issue-14 path for comparison:
            ``decode_file`` + ``engine.transcribe`` on the whole array in one process

Idle RSS: the same process after model load and a warm-up file through the same path (one
round of the clips, 43 s: so lazily loaded engines, VAD and speaker model included, and
faster-whisper's path for audio over 20 s have each run once; the first call of that path alone
adds ~65 MB); for the CLI, the peak RSS of ``asrhub transcribe`` on that warm-up file. Peak: the most VmRSS sampled every 0.1 s while the
long file is processed (the CLI: its ru_maxrss). Target: peak/idle <= 1.5. Also wall time,
RTF and WER against the reference. Prints the table and writes bench/results/long_file.md.

    .venv/bin/python bench/long_file.py --minutes 20              # develop
    .venv/bin/python bench/long_file.py --minutes 180             # the issue's 3-hour file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

# Run as a script, bench/ is sys.path[0] and bench/wyoming.py would shadow the wyoming package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from asrhub.testing import free_port, long_recording, wer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
ASRHUB = str(Path(sys.executable).parent / "asrhub")


def vm(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """The most VmRSS of ``pid`` seen while running (every ``interval`` seconds)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, vm(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def warmup() -> Path:
    path = WORK / "warmup.wav"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        long_recording(path, 1)  # one round of the clips
    return path


def build(minutes: float) -> tuple[Path, str]:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"long_{minutes:g}min.wav"
    ref = path.with_suffix(".txt")
    if not (path.exists() and ref.exists()):
        ref.write_text(long_recording(path, minutes * 60))
    return path, ref.read_text()


def config(state: Path, model: str, protocol: str | None = None, port: int = 0) -> Path:
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{state}"', 'log_format = "json"',
             "preload = true", "", "[engines.whisper]", f'model = "{model}"', ""]
    for name in ("ptt", "streaming_stt", "vad_stream", "file_transcription", "session_broadcast",
                 "openai_api", "funasr_runtime", "wyoming"):
        lines += [f"[protocols.{name}]", f"enabled = {'true' if name == protocol else 'false'}"]
        if name == protocol:
            lines.append(f"port = {port}")
            if name == "openai_api":
                lines.append(f"max_body_bytes = {2 * 1024 ** 3}")
            if name == "file_transcription":
                lines.append("max_file_size_mb = 2048")
        lines.append("")
    path = state / "asrhub.toml"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------- the paths


def run_cli(model: str, path: Path, state: Path) -> dict[str, Any]:
    cfg = config(state, model)

    def once(file: Path) -> tuple[float, float, str]:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            started = time.perf_counter()
            proc = subprocess.Popen([ASRHUB, "transcribe", str(file), "--config", str(cfg)],
                                    stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss of this child alone
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if proc.returncode:
                raise RuntimeError(f"asrhub transcribe failed: {err.read()[-2000:]}")
            return usage.ru_maxrss / 1024, wall, out.read()

    idle, _, _ = once(warmup())
    peak, wall, text = once(path)
    return {"idle": idle, "peak": peak, "wall": wall, "text": text,
            "note": "idle = peak RSS of the same command on the 43 s warm-up file"}


def run_whole(model: str, path: Path, state: Path) -> dict[str, Any]:
    code = f"""
import json, resource, sys, time
from asrhub.testing import make_hub
from asrhub.audio import decode_file
hub = make_hub({{"server": {{"state_dir": {str(state)!r}}}, "engines": {{"whisper": {{"model": {model!r}}}}}}}, only=[])
engine = hub.engine_sync("asr")
engine.transcribe(decode_file({str(warmup())!r}))
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
text = engine.transcribe(decode_file({str(path)!r})).text
wall = time.perf_counter() - t
print(json.dumps({{"idle": idle, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall": wall, "text": text}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["note"] = "idle = ru_maxrss after model load + the warm-up file (in process)"
    return result


@contextlib.contextmanager
def server(model: str, protocol: str, state: Path):
    port = free_port()
    cfg = config(state, model, protocol, port)
    log_path = state / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([ASRHUB, "serve", "--config", str(cfg)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def seed_client() -> Any:
    spec = importlib.util.spec_from_file_location(
        "funasr_client", ROOT / "tests" / "plugins" / "file_transcription" / "funasr_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_8767(model: str, path: Path, state: Path) -> dict[str, Any]:
    module = seed_client()

    async def transcribe(port: int, file: Path) -> str:
        client = module.FunASRClient(f"ws://127.0.0.1:{port}")
        assert await client.connect()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the seed client prints progress
                result = await client.transcribe_file(file, force_refresh=True)
        finally:
            await client.disconnect()
        return str(result["text"])

    with server(model, "file_transcription", state) as (proc, port):
        asyncio.run(transcribe(port, warmup()))
        idle = vm(proc.pid)
        started = time.perf_counter()
        with Sampler(proc.pid) as sampler:
            text = asyncio.run(transcribe(port, path))
        wall = time.perf_counter() - started
        return {"idle": idle, "peak": sampler.peak, "wall": wall, "text": text,
                "hwm": vm(proc.pid, "VmHWM"),
                "note": "idle = VmRSS after preload + the warm-up task; includes the upload (chunked, spooled)"}


def run_openai(model: str, path: Path, state: Path) -> dict[str, Any]:
    import openai

    with server(model, "openai_api", state) as (proc, port):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                               timeout=4 * 3600, max_retries=0)

        def transcribe(file: Path) -> str:
            with file.open("rb") as fh:
                return client.audio.transcriptions.create(model="whisper-1", file=fh).text

        transcribe(warmup())
        idle = vm(proc.pid)
        started = time.perf_counter()
        with Sampler(proc.pid) as sampler:
            text = transcribe(path)
        wall = time.perf_counter() - started
        return {"idle": idle, "peak": sampler.peak, "wall": wall, "text": text,
                "hwm": vm(proc.pid, "VmHWM"),
                "note": "idle = VmRSS after preload + the warm-up request; includes the upload (spooled)"}


PATHS = {"cli": run_cli, "8767": run_8767, "openai": run_openai, "whole": run_whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=180.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--paths", default="cli,8767,openai")
    parser.add_argument("--whole", action="store_true",
                        help="also the whole-array path of before (files of at most 30 min)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "long_file.md"),
                        help="results file (the run goes on top, earlier runs stay); '-' = none")
    args = parser.parse_args()
    names = [p for p in args.paths.split(",") if p]
    if args.whole and args.minutes <= 30:
        names.append("whole")
    path, reference = build(args.minutes)
    import soundfile as sf

    seconds = sf.info(str(path)).duration
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix="asrhub-long-") as state:
            print(f"{name}: transcribing {seconds / 60:.1f} min ...", file=sys.stderr, flush=True)
            results[name] = PATHS[name](args.model, path, Path(state))
            r = results[name]
            (WORK / f"{path.stem}.{name}.txt").write_text(r["text"])  # for a look at the errors
            print(f"{name}: idle {r['idle']:.0f} MB, peak {r['peak']:.0f} MB, {r['wall']:.0f} s",
                  file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    rows = ["| path | idle RSS (MB) | peak RSS (MB) | peak/idle (target <= 1.5) | wall (s) | RTF | WER |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['idle']:.0f} | {r['peak']:.0f} | {r['peak'] / r['idle']:.2f} | "
                    f"{r['wall']:.1f} | {r['wall'] / seconds:.3f} | {wer(reference, r['text']) * 100:.2f} % |")
    table = "\n".join(rows)
    print(table)
    notes = "\n".join(f"- {name}: {r['note']}" + (f"; server VmHWM {r['hwm']:.0f} MB (start-up included)"
                                                 if "hwm" in r else "") for name, r in results.items())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    if args.out == "-":
        return
    title = "# Long files: memory through each file path\n"
    out = Path(args.out)
    earlier = out.read_text().removeprefix(title).lstrip("\n") if out.exists() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(  # the new run on top, earlier runs kept below it
        f"{title}\n## {seconds / 60:.1f} min, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
        f"`{' '.join(['.venv/bin/python', 'bench/long_file.py', *sys.argv[1:]])}` — model {args.model}, "
        f"file {path.name} ({seconds / 60:.1f} min, 16 kHz WAV, {len(reference.split())} reference words), "
        f"commit {commit}, {platform.node()}, {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after.\n\n"
        f"{table}\n\n{notes}\n" + (f"\n{earlier}" if earlier else ""))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

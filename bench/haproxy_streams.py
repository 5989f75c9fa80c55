#!/usr/bin/env python3
"""Live streams through HAProxy vs straight to asrhub, side by side in one run.

Starts one ``asrhub serve`` (streaming_stt only, Whisper ``--model``) and Debian's HAProxy in
front of it with the configuration ``asrhub haproxy-config`` generates (asrhub.deploy), all on
loopback. Then runs ``--streams`` concurrent real-time sessions (bench/streaming_latency.py's
client: real recordings, stop right after the last chunk) ``--rounds`` times, alternating
direct and proxied, and prints stop → final p50/p95, WER and the WebSocket connect time for
each path and their ratio.

    .venv/bin/python bench/haproxy_streams.py --streams 6 --seconds 12 --model tiny.en \
        --out bench/results/haproxy_streams.md
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from asrhub.deploy import Route, haproxy_config
from asrhub.testing import free_port, wer

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


latency = _load("streaming_latency")


async def connect_time(url: str, tries: int = 10) -> float:
    """Median time to open a WebSocket and get the protocol's greeting."""
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(tries):
            started = time.perf_counter()
            async with http.ws_connect(url) as ws:
                await ws.receive_json()
                times.append(time.perf_counter() - started)
    return statistics.median(times)


async def one_round(url: str, streams: int, seconds: float) -> list:
    jobs = []
    for i in range(streams):
        audio, reference = latency.build_audio(seconds, offset=i * 3, tail=0.0)
        jobs.append(latency.run_stream(url, i, audio, reference, "pcm", delay=i / max(streams, 1)))
    return list(await asyncio.gather(*jobs))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (make system-deps)")

    work = Path(tempfile.mkdtemp(prefix="asrhub-haproxy-bench-"))
    port, public = free_port(), free_port()
    server = latency.start_server(args.model, port, work, workers=max(2, args.streams))
    cfg = work / "haproxy.cfg"
    cfg.write_text(haproxy_config([Route("streaming_stt", public, [port])], bind="127.0.0.1"))
    proxy = None
    try:
        await latency.wait_ready(f"http://127.0.0.1:{port}", server)
        proxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        paths = {"direct": f"ws://127.0.0.1:{port}/", "haproxy": f"ws://127.0.0.1:{public}/"}
        for _ in range(100):  # HAProxy up and its health check passed
            try:
                await connect_time(paths["haproxy"], tries=1)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        results: dict[str, list] = {name: [] for name in paths}
        connects: dict[str, float] = {name: await connect_time(url) for name, url in paths.items()}
        for _ in range(args.rounds):
            for name, url in paths.items():
                results[name] += await one_round(url, args.streams, args.seconds)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        server.terminate()
        server.wait(60)
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    lines = [f"## {args.streams} streams x {args.rounds} rounds, {args.model}, {args.seconds:.0f} s "
             f"each (load average 1/15 min at the end: {load[0]:.1f}/{load[2]:.1f})", "",
             "| path | connect (median) | stop → final p50 | p95 | WER | errors |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for name, rows in results.items():
        finals = [r.stop_to_final_s for r in rows if r.stop_to_final_s is not None]
        score = statistics.mean(wer(r.reference, r.final) for r in rows)
        errors = sum(len(r.errors) for r in rows)
        summary[name] = (pct(finals, 50), pct(finals, 95))
        lines.append(f"| {name} | {connects[name] * 1000:.1f} ms | {summary[name][0]:.2f} s | "
                     f"{summary[name][1]:.2f} s | {score:.1%} | {errors} |")
    ratio = summary["haproxy"][1] / summary["direct"][1] if summary["direct"][1] else float("nan")
    lines += ["", f"p95 through HAProxy / direct: **{ratio:.2f}×**; connect "
              f"{connects['haproxy'] / connects['direct']:.2f}×", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

#!/usr/bin/env python3
"""Soak: many connections across every protocol of a real ``asrhub serve`` for a long while.

One ``asrhub serve`` child (every protocol, Whisper ``--model``, loopback, its own temporary
state_dir; bench/_server.py). ``--connections`` (default 200) client connections for
``--duration`` seconds (default 600), spread over the protocols:

* ``--active`` of them (default 10) are workers that never rest: each runs real requests one
  after another, rotating over the protocols: live streams of real recordings at real-time
  pace (streaming_stt, vad_stream, session_broadcast sender + receiver, PTT, Wyoming, OpenAI
  realtime), short
  uploads (file_transcription, OpenAI HTTP, FunASR runtime offline). The clients are
  bench/memory_and_lag.py's. Every transcript is checked against its human reference (WER).
* the rest stay connected and idle the whole time, as a dashboard or a satellite would:
  WebSocket heartbeats answered by the client library, plus the protocol's own keepalive
  where it has one (vad_stream ``ping``, Wyoming ``describe``, a PTT ``reset`` before its
  idle timeout); session_broadcast receivers listen to the sessions the workers send to and
  rejoin when a sender's session ends (the protocol then closes its receivers with 1000,
  "session closed"). Any other drop is an unexpected failure (counted, reopened).

Listener limits: 64 connections per listener (PTT 20), 127.0.0.1 exempt from the per-peer
limit; the spread keeps every listener under its limit at the default 200 (printed).
Every minute: the server's RSS, open fds and event-loop lag (``/metrics``' histogram
``asrhub_event_loop_lag_seconds``, p50/p99 over that minute). At the end: the server's log
scanned for error-level lines and tracebacks, per-protocol request counts and latencies.

    .venv/bin/python bench/soak.py                                  # 200 connections, 600 s
    .venv/bin/python bench/soak.py --connections 40 --duration 60 --out /tmp/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from asrhub.audio import decode_file  # noqa: E402
from asrhub.testing import manifest, testdata_dir, wer  # noqa: E402
from bench import memory_and_lag as clients  # noqa: E402
from bench._server import AsrhubServer, load_avg, proc_fds, proc_rss_mb, scan_log  # noqa: E402

# English recordings with human references (shared/testdata/NOTES.tsv), short ones first.
CLIPS = ["en/pocketsphinx_librivox_ss01_0880.wav", "en/pocketsphinx_goforward.wav",
         "en/pocketsphinx_librivox_ss01_0930.wav", "en/pocketsphinx_librivox_ss01_0870.wav"]
MAX_WER = 0.5  # a transcript worse than this is a wrong answer (tiny.en does 0.0-0.2 here)
JOB_TIMEOUT_S = 180.0
# Share of the idle connections per listener (PTT's listener allows 20 connections).
IDLE_SHARE = {"streaming_stt": 0.15, "vad_stream": 0.15, "ptt": 0.07, "file_transcription": 0.12,
              "session_broadcast": 0.15, "openai_realtime": 0.12, "funasr_runtime": 0.12,
              "wyoming": 0.12}
LISTENER = {"openai_realtime": "openai_api", "openai_http": "openai_api"}
JOBS = ["streaming_stt", "wyoming", "openai_http", "ptt", "file_transcription", "vad_stream",
        "funasr_runtime", "session_broadcast", "openai_realtime"]
BROADCAST_SESSIONS = 4  # receivers listen to these; the session_broadcast jobs send to them


@dataclass
class Tally:
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    wers: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    failures: list[str] = field(default_factory=list)  # unexpected client-side failures
    wrong: list[str] = field(default_factory=list)  # transcripts over MAX_WER
    keepalives: collections.Counter[str] = field(default_factory=collections.Counter)
    idle_drops: collections.Counter[str] = field(default_factory=collections.Counter)
    broadcast_results: int = 0
    rejoins: int = 0  # session_broadcast receivers rejoining after a session ended


def split_idle(total: int) -> dict[str, int]:
    counts = {name: int(total * share) for name, share in IDLE_SHARE.items()}
    names = list(IDLE_SHARE)
    i = 0
    while sum(counts.values()) < total:
        counts[names[i % len(names)]] += 1
        i += 1
    return counts


# ----------------------------------------------------------------------------- idle connections


async def idle_ws(name: str, port: int, path: str, tally: Tally, stop: asyncio.Event,
                  keepalive: dict[str, Any] | None, every: float, rng: random.Random) -> None:
    """One connection held open until ``stop``; reopened (and counted) if it drops."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                ws = await http.ws_connect(f"http://127.0.0.1:{port}{path}", heartbeat=None,
                                           protocols=("binary",) if name == "funasr_runtime" else ())
            except (aiohttp.ClientError, OSError) as exc:
                tally.failures.append(f"{name} idle connect: {exc!r}"[:200])
                await wait(stop, 5)
                continue

            ended = False  # the session ended: the server then closes its clients

            async def read(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                nonlocal ended
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        body = json.loads(msg.data)
                        if isinstance(body, dict) and body.get("type") == "closed":
                            ended = True
                        if isinstance(body, dict) and body.get("type") == "error":
                            tally.failures.append(f"{name} idle got error: {msg.data[:160]}")
                        elif isinstance(body, dict) and ("asr" in body or body.get("type") == "result"):
                            tally.broadcast_results += 1
                        else:
                            tally.keepalives[name] += 1

            reader = asyncio.create_task(read())
            stopped = asyncio.create_task(stop.wait())
            await wait(stop, rng.uniform(0, every))
            while not stop.is_set() and not reader.done():
                if keepalive is not None:
                    try:
                        await ws.send_json(keepalive)
                    except (ConnectionError, aiohttp.ClientError, RuntimeError):
                        break
                await asyncio.wait([reader, stopped], timeout=every, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if ended or (name == "session_broadcast" and ws.close_code == 1000):
                tally.rejoins += 1
            elif not stop.is_set():
                tally.idle_drops[name] += 1
                tally.failures.append(f"{name} idle connection dropped (close code {ws.close_code})")
            await ws.close()
            reader.cancel()


async def idle_wyoming(port: int, tally: Tally, stop: asyncio.Event, rng: random.Random) -> None:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe

    while not stop.is_set():
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await wait(stop, rng.uniform(0, 30))
                while not stop.is_set():
                    await client.write_event(Describe().event())
                    event = await asyncio.wait_for(client.read_event(), 30)
                    if event is None or event.type != "info":
                        raise ConnectionError(f"describe answered {event and event.type}")
                    tally.keepalives["wyoming"] += 1
                    await wait(stop, 30)
        except (OSError, ConnectionError, TimeoutError) as exc:
            if not stop.is_set():
                tally.idle_drops["wyoming"] += 1
                tally.failures.append(f"wyoming idle: {exc!r}"[:200])
                await wait(stop, 1)


async def wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


# ----------------------------------------------------------------------------- workers


async def job(kind: str, ports: dict[str, int], clip: str, audio: dict[str, np.ndarray],
              broadcast_sessions: list[str], rng: random.Random) -> str:
    pcm, path = audio[clip], testdata_dir() / clip
    port = ports[LISTENER.get(kind, kind)]
    if kind == "streaming_stt":
        return await clients.streaming(port, pcm)
    if kind == "wyoming":
        return await clients.wyoming(port, pcm)
    if kind == "openai_http":
        return await clients.openai_upload(port, path)
    if kind == "ptt":
        return await clients.ptt(port, pcm)
    if kind == "file_transcription":
        return await clients.file_upload(port, path)
    if kind == "vad_stream":
        return await vad_stream(port, pcm)
    if kind == "funasr_runtime":
        return await clients.funasr_offline(port, pcm)
    if kind == "session_broadcast":
        return await broadcast_to(port, pcm, broadcast_sessions)
    if kind == "openai_realtime":
        return await realtime(port, pcm)
    raise ValueError(kind)


async def realtime(port: int, pcm: np.ndarray) -> str:
    """OpenAI realtime transcription (bench/openai_api.py's session: GA session.update, 24 kHz
    PCM, server VAD) at real-time pace, plus 1 s of quiet; the completed items' text, read
    until none came for 5 s after the first (at most 60 s)."""
    import base64

    import soxr

    audio = np.concatenate([soxr.resample(pcm, 16000, 24000), np.zeros(24000, np.float32)])
    texts: list[str] = []
    last = time.monotonic()
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"http://127.0.0.1:{port}/v1/realtime?intent=transcription") as ws:
        await ws.send_json({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad"}}}}})

        async def reader() -> None:
            nonlocal last
            async for msg in ws:
                event = json.loads(msg.data)
                if event.get("type", "").endswith("transcription.completed"):
                    texts.append(event.get("transcript", ""))
                    last = time.monotonic()
                elif event.get("type") == "error":
                    raise ConnectionError(f"realtime error: {event.get('error')}")
        task = asyncio.create_task(reader())
        step = 2400  # 0.1 s
        for i in range(0, len(audio), step):
            chunk = (np.clip(audio[i:i + step], -1, 1) * 32767).astype("<i2").tobytes()
            await ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
            await asyncio.sleep(0.1)
        await until_quiet(task, texts, lambda: last)
        if task.done() and task.exception():
            raise task.exception()  # type: ignore[misc]
        task.cancel()
    return " ".join(t for t in texts if t)


async def until_quiet(task: asyncio.Task, texts: list[str], last, quiet_s: float = 5.0,
                      limit_s: float = 60.0) -> None:
    """After the audio: wait for a first result, then until none came for ``quiet_s`` (these
    protocols have no end-of-request reply); at most ``limit_s``."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s and not task.done():
        if texts and time.monotonic() - max(last(), start) >= quiet_s:
            return
        await asyncio.sleep(0.2)


async def vad_stream(port: int, pcm: np.ndarray) -> str:
    """bench/memory_and_lag.py's vad_stream client, but reading results until none came for
    5 s after the first (at most 60 s), not a fixed 2 s: under load the last one comes later."""
    padded = np.concatenate([pcm, np.zeros(16000, np.float32)])
    texts: list[str] = []
    last = time.monotonic()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        async def reader() -> None:
            nonlocal last
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("type") == "result":
                    texts.append(data["text"])
                    last = time.monotonic()
        task = asyncio.create_task(reader())
        for i in range(0, len(padded), 320):
            await ws.send_bytes(clients.float_to_pcm16(padded[i:i + 320]))
            await asyncio.sleep(0.02)
        await until_quiet(task, texts, lambda: last)
        task.cancel()
    return " ".join(texts)


BROADCAST_LOCKS: dict[str, asyncio.Lock] = {}


async def broadcast_to(port: int, pcm: np.ndarray, sessions: list[str]) -> str:
    """bench/memory_and_lag.py's broadcast client, sending to a session the idle receivers
    watch (one sender per session at a time: a busy one means a fresh session)."""
    for session in sessions:
        lock = BROADCAST_LOCKS.setdefault(session, asyncio.Lock())
        if not lock.locked():
            async with lock:
                return await clients.broadcast(port, pcm, session)
    return await clients.broadcast(port, pcm, f"soak{uuid.uuid4().hex[:8]}")




async def worker(index: int, ports: dict[str, int], audio: dict[str, np.ndarray], refs: dict[str, str],
                 broadcast_sessions: list[str], tally: Tally, stop: asyncio.Event) -> None:
    rng = random.Random(index)
    turn = index
    while not stop.is_set():
        kind = JOBS[turn % len(JOBS)]
        clip = CLIPS[(turn // len(JOBS) + index) % len(CLIPS)]
        turn += 1
        started = time.monotonic()
        try:
            text = await asyncio.wait_for(job(kind, ports, clip, audio, broadcast_sessions, rng), JOB_TIMEOUT_S)
        except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError, ValueError, KeyError) as exc:
            tally.failures.append(f"{kind} {clip}: {exc!r}"[:200])
            continue
        seconds = time.monotonic() - started
        tally.requests[kind] += 1
        tally.latencies[kind].append(seconds)
        score = wer(refs[clip], text) if not text.startswith("error:") else 1.0
        tally.wers[kind].append(score)
        if score > MAX_WER:
            tally.wrong.append(f"{kind} {clip}: WER {score:.2f}: {text[:120]!r}")


# ----------------------------------------------------------------------------- sampling


async def sampler(server: AsrhubServer, every: float, stop: asyncio.Event, rows: list[dict[str, Any]],
                  open_count) -> None:
    start = time.monotonic()
    before = await asyncio.to_thread(server.metrics)
    while True:
        ended = stop.is_set()
        if not ended:
            await wait(stop, every)
        after = await asyncio.to_thread(server.metrics)
        rows.append({"t": time.monotonic() - start, "rss": proc_rss_mb(server.pid), "fds": proc_fds(server.pid),
                     "lag_p50": clients.lag_quantile(before, after, 0.5),
                     "lag_p99": clients.lag_quantile(before, after, 0.99),
                     "lag_max": clients.lag_quantile(before, after, 1.0), "open": open_count()})
        before = after
        if stop.is_set():
            return


def server_connections(metrics: str) -> dict[str, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith("asrhub_connections_open{"):
            name = line.split('protocol="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


async def soak(server: AsrhubServer, args: argparse.Namespace, tally: Tally) -> dict[str, Any]:
    audio = {clip: decode_file(testdata_dir() / clip) for clip in CLIPS}
    refs = {clip: manifest()[clip]["transcript"] for clip in CLIPS}
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    ports = server.ports
    sessions = [f"soak{uuid.uuid4().hex[:8]}" for _ in range(BROADCAST_SESSIONS)]
    idle = split_idle(args.connections - args.active)
    tasks: list[asyncio.Task] = []
    keep = {"vad_stream": ({"command": "ping"}, 15.0),
            "ptt": ({"type": "control", "command": "reset"}, 120.0)}
    for name, count in idle.items():
        for i in range(count):
            r = random.Random(rng.random())
            if name == "wyoming":
                tasks.append(asyncio.create_task(idle_wyoming(ports["wyoming"], tally, stop, r)))
                continue
            path = {"ptt": "/ws/asr", "openai_realtime": "/v1/realtime?intent=transcription",
                    "session_broadcast": f"/ws/asr/{sessions[i % len(sessions)]}?mode=receiver"}.get(name, "/")
            keepalive, every = keep.get(name, (None, 30.0))
            tasks.append(asyncio.create_task(idle_ws(name, ports[LISTENER.get(name, name)], path, tally, stop,
                                                     keepalive, every, r)))
    await asyncio.sleep(5)  # the idle connections are open: the start sample
    rows: list[dict[str, Any]] = []
    sample = asyncio.create_task(sampler(server, args.sample_s, stop, rows, lambda: 0))
    workers = [asyncio.create_task(worker(i, ports, audio, refs, sessions, tally, stop))
               for i in range(args.active)]
    await asyncio.sleep(args.duration)
    opened = server_connections(await asyncio.to_thread(server.metrics))
    stop.set()
    await asyncio.wait(workers, timeout=JOB_TIMEOUT_S + 10)
    await sample
    await asyncio.wait(tasks, timeout=30)
    for task in [*workers, *tasks]:
        task.cancel()
    return {"rows": rows, "idle": idle, "open_at_end": opened}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--active", type=int, default=10, help="workers running real requests")
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.md"))
    args = parser.parse_args()
    if not 0 < args.active < args.connections:
        parser.error("--active must be between 1 and --connections - 1")
    command = " ".join(["bench/soak.py", *sys.argv[1:]])
    load_start = load_avg()
    server = AsrhubServer(model=args.model)
    server.start()
    print(f"server pid {server.pid}, ports {server.ports}; idle split "
          f"{split_idle(args.connections - args.active)}", flush=True)
    tally = Tally()
    try:
        result = asyncio.run(soak(server, args, tally))
        alive = server.alive()
    finally:
        exit_code = server.stop()
    scan = scan_log(server.log_path)
    report = render(args, command, load_start, load_avg(), result, tally, scan, alive, exit_code)
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    if scan.error_count == 0 and scan.tracebacks == 0:
        server.cleanup()
    else:
        print(f"server log kept: {server.log_path}")


def render(args, command, load_start, load_end, result, tally: Tally, scan, alive, exit_code) -> str:
    rows = result["rows"]
    first, last = rows[0], rows[-1]
    sample_rows = ["| t (s) | RSS (MB) | open fds | loop lag p50 / p99 / max (ms) |", "|---|---|---|---|"]
    for r in rows:
        sample_rows.append(f"| {r['t']:.0f} | {r['rss']:.0f} | {r['fds']} | {r['lag_p50'] * 1000:g} / "
                           f"{r['lag_p99'] * 1000:g} / {r['lag_max'] * 1000:g} |")
    req_rows = ["| protocol | requests | latency p50 (s) | p95 (s) | max (s) | WER mean | idle connections | "
                "idle keepalive answers | idle drops |", "|---|---|---|---|---|---|---|---|---|"]
    for kind in JOBS:
        lat = tally.latencies.get(kind, [])
        wers = tally.wers.get(kind, [])
        idle_name = kind
        req_rows.append(
            f"| {kind} | {tally.requests.get(kind, 0)} | {percentile(lat, 0.5):.2f} | {percentile(lat, 0.95):.2f} | "
            f"{max(lat) if lat else float('nan'):.2f} | {statistics.mean(wers) if wers else float('nan'):.3f} | "
            f"{result['idle'].get(idle_name, 0)} | {tally.keepalives.get(idle_name, 0)} | "
            f"{tally.idle_drops.get(idle_name, 0)} |")
    mid = rows[len(rows) // 2]
    held, failed = [], []
    (held if alive else failed).append(f"the server {'stayed up' if alive else 'DIED'} (exit code after SIGTERM: {exit_code})")
    (held if scan.error_count == 0 else failed).append(f"{scan.error_count} error-level log lines")
    (held if scan.tracebacks == 0 else failed).append(f"{scan.tracebacks} tracebacks in the log")
    (held if not tally.failures else failed).append(f"{len(tally.failures)} unexpected client-side failures")
    (held if not tally.wrong else failed).append(f"{len(tally.wrong)} transcripts over WER {MAX_WER}")
    (held if last["rss"] - mid["rss"] < 0.05 * mid["rss"] else failed).append(
        f"RSS {first['rss']:.0f} MB at start → {mid['rss']:.0f} MB at half time → {last['rss']:.0f} MB at end "
        "(flat means the second half adds < 5 %)")
    (held if last["fds"] <= first["fds"] + 10 else failed).append(
        f"open fds {first['fds']} at start → {last['fds']} at end")
    worst_p99 = max(r["lag_p99"] for r in rows)
    (held if worst_p99 <= 0.1 else failed).append(f"event-loop lag p99 per minute at most {worst_p99 * 1000:g} ms "
                                                  "(target ≤ 100 ms)")
    total = sum(tally.requests.values())
    lines = [f"# Soak: {args.connections} connections × {args.duration:.0f} s across every protocol (`{command}`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine ({os.cpu_count()} cores, "
             "shared with other work: a stability bench, not a latency bench; the latencies below include "
             "real-time pacing and the load from elsewhere).", "",
             f"- `uptime` at start: `{load_start}`", f"- `uptime` at end: `{load_end}`",
             f"- server: `asrhub serve`, every protocol, Whisper `{args.model}`, 127.0.0.1, own temp state_dir, "
             "default connection limits (64 per listener, PTT 20; 127.0.0.1 exempt from the per-peer limit)",
             f"- {args.active} workers run real requests back to back (rotating over {', '.join(JOBS)}; clips "
             f"{', '.join(c.split('/')[-1] for c in CLIPS)}; streams paced at real time); "
             f"{args.connections - args.active} idle connections: {result['idle']}",
             f"- server-side open connections just before the end (metrics): {result['open_at_end']}", "",
             "## Requests", "", *req_rows, "",
             f"{total} requests; session_broadcast results seen by idle receivers: {tally.broadcast_results}, receivers rejoining after a session ended: {tally.rejoins}.", "",
             "## Server process (every sample; lag over the interval before it)", "", *sample_rows, "",
             f"Log: {scan.lines} lines, by level {dict(sorted(scan.by_level.items()))}, "
             f"{scan.error_count} error-level, {scan.tracebacks} tracebacks.", ""]
    if scan.errors:
        lines += ["Error-level lines (first few):", "", "```", *scan.errors, "```", ""]
    if tally.failures or tally.wrong:
        lines += ["Client-side failures and wrong transcripts (first 15):", "",
                  *[f"- {f}" for f in (tally.failures + tally.wrong)[:15]], ""]
    lines += ["## Conclusion", "", "Held:", "", *[f"- {h}" for h in held], "",
              "Did not hold:", "", *([f"- {f}" for f in failed] or ["- nothing"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Voiceprint stores side by side: the "json" store (whole file rewritten per change) and the
"sqlite" store (one row per change, in-memory matrix for matching), at several store sizes.

Per size N (256-dim unit vectors, as resemblyzer makes): the bytes one registration writes (the
JSON file's size; the growth of SQLite's WAL), the median time of a registration (``put`` of a
new id, fsync included on both), and the median time of one ``closest`` query as protocols
make it (``asrhub.speakers.closest``: a loop over ``store.list()`` for "json", the store's own
matrix product for "sqlite"). Ratios sqlite/json are printed side by side. Bounded: ``--puts``
registrations and ``--queries`` queries per size.

    .venv/bin/python bench/voiceprint_store.py --sizes 176 1000 --puts 20 --queries 200
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asrhub.engine import Voiceprint  # noqa: E402
from asrhub.speakers import closest  # noqa: E402
from asrhub_plugins.speakers.sqlite_store import SqliteVoiceprintStore  # noqa: E402
from asrhub_plugins.speakers.store import JsonVoiceprintStore  # noqa: E402


def voiceprint(speaker_id: str, seed: int) -> Voiceprint:
    vec = np.random.default_rng(seed).normal(size=256).astype(np.float32)
    return Voiceprint(speaker_id, speaker_id, vec / np.linalg.norm(vec), time.time(), 4.0, "resemblyzer")


def measure(store: JsonVoiceprintStore | SqliteVoiceprintStore, written: Path, size: int, puts: int,
            queries: int) -> tuple[int, float, float]:
    prints = [voiceprint(f"user-{i:05d}", i) for i in range(size)]
    if isinstance(store, JsonVoiceprintStore):  # one write, not N ever larger ones (bench time)
        store._modify(lambda table: table.update({vp.speaker_id: vp for vp in prints}) or True)
    else:
        for vp in prints:
            store.put(vp)
    put_s = []
    for i in range(puts):
        started = time.perf_counter()
        store.put(voiceprint(f"new-{i}", 10_000_000 + i))
        put_s.append(time.perf_counter() - started)
    bytes_per_put = []
    for i in range(puts):  # separately: emptying the WAL from another connection makes the
        if isinstance(store, SqliteVoiceprintStore):  # store reload its cache on the next call
            with contextlib.closing(sqlite3.connect(store.path)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = written.stat().st_size
        store.put(voiceprint(f"bytes-{i}", 20_000_000 + i))
        after = written.stat().st_size
        bytes_per_put.append(after if isinstance(store, JsonVoiceprintStore) else after - before)
    probes = [voiceprint("q", 30_000_000 + i).embedding for i in range(queries)]
    query_s = []
    for probe in probes:
        started = time.perf_counter()
        closest(probe, store, engine="resemblyzer")
        query_s.append(time.perf_counter() - started)
    return int(statistics.median(bytes_per_put)), statistics.median(put_s), statistics.median(query_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[176, 1000])
    parser.add_argument("--puts", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "voiceprint_store.md")
    args = parser.parse_args()
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            json_path = Path(tmp) / "speakers.json"
            j = measure(JsonVoiceprintStore(json_path), json_path, size, args.puts, args.queries)
            db = Path(tmp) / "voiceprints.sqlite3"
            s = measure(SqliteVoiceprintStore(db), db.with_name(db.name + "-wal"), size, args.puts,
                        args.queries)
        rows.append(f"| {size} | {j[0]:,} | {s[0]:,} | {s[0] / j[0]:.3f}× | {j[1] * 1e3:.2f} | "
                    f"{s[1] * 1e3:.2f} | {s[1] / j[1]:.2f}× | {j[2] * 1e6:.0f} | {s[2] * 1e6:.0f} | "
                    f"{s[2] / j[2]:.3f}× |")
        print(rows[-1], flush=True)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Voiceprint stores: json vs sqlite (one registration, one speaker query)", "",
        f"{datetime.now():%Y-%m-%d %H:%M} · {platform.machine()} · Python {platform.python_version()} · "
        f"`{' '.join(['bench/voiceprint_store.py', *sys.argv[1:]])}`", "",
        f"Load: before `{load_before}`; after `{load_after}`.", "",
        "Medians; 256-dim voiceprints; a registration is a `put` of a new id (fsync on both stores); "
        "a query is `asrhub.speakers.closest` with the engine filter, as protocols call it.", "",
        "| voiceprints | json: bytes written | sqlite: bytes written (WAL) | ratio | json put ms | "
        "sqlite put ms | ratio | json query µs | sqlite query µs | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, ""])
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

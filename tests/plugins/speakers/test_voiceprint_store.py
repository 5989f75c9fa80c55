"""The voiceprint stores "json" and "sqlite": persistence, atomic writes, permissions, sharing
between processes. The behaviour both must have is tested on both (``kind``); what only one of
them has is tested on that one (SQLite's own: test_sqlite_store.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from asrhub.engine import Voiceprint, VoiceprintStore
from asrhub.testing import make_hub
from asrhub_plugins.speakers.sqlite_store import SqliteVoiceprintStore
from asrhub_plugins.speakers.store import JsonVoiceprintStore, VoiceprintFileError

STORES = ("json", "sqlite")
FILE_NAMES = {"json": "speakers.json", "sqlite": "voiceprints.sqlite3"}
AnyStore = JsonVoiceprintStore | SqliteVoiceprintStore


def open_at(kind: str, directory: Path) -> AnyStore:
    """The store of ``kind`` on its file in ``directory``; opening it again is what a restarted
    process does."""
    path = directory / FILE_NAMES[kind]
    return JsonVoiceprintStore(path) if kind == "json" else SqliteVoiceprintStore(path)


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def voiceprint(speaker_id: str, seed: int = 0, name: str | None = None, dim: int = 256) -> Voiceprint:
    vec = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return Voiceprint(speaker_id, name or speaker_id.title(), vec / np.linalg.norm(vec),
                      created_at=1_700_000_000.5 + seed, audio_seconds=4.25, engine="resemblyzer")


def assert_same(a: Voiceprint, b: Voiceprint) -> None:
    assert (a.speaker_id, a.name, a.created_at, a.audio_seconds, a.engine) == \
        (b.speaker_id, b.name, b.created_at, b.audio_seconds, b.engine)
    assert a.embedding.dtype == np.float32
    np.testing.assert_array_equal(a.embedding, b.embedding)  # bit-exact through JSON


def test_default_path_is_in_the_state_dir(tmp_path: Path) -> None:
    hub = make_hub({"server": {"state_dir": str(tmp_path / "state")}}, only=[])
    store = hub.engine_sync("voiceprints")
    assert isinstance(store, VoiceprintStore) and isinstance(store, SqliteVoiceprintStore)  # the default
    assert store.path == tmp_path / "state" / "voiceprints.sqlite3"
    json_hub = make_hub({"server": {"state_dir": str(tmp_path / "state")},
                         "engines": {"voiceprints": "json"}}, only=[])
    assert json_hub.engine_sync("voiceprints").path == tmp_path / "state" / "speakers.json"
    for kind, file in (("json", "vp.json"), ("sqlite", "vp.db")):
        configured = make_hub({"engines": {"voiceprints": kind, kind: {"path": str(tmp_path / "x" / file)}}},
                              only=[])
        assert configured.engine_sync("voiceprints").path == tmp_path / "x" / file


def test_survives_a_restart(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    assert store.list() == []
    alice, bob = voiceprint("alice", 1, name="爱丽丝"), voiceprint("bob", 2)
    alice.owner = "token:ops"
    store.put(alice)
    store.put(bob)
    store.close()
    restarted = open_at(kind, tmp_path)  # a new process would do exactly this
    assert [vp.speaker_id for vp in restarted.list()] == ["alice", "bob"]
    got = restarted.get("alice")
    assert got is not None
    assert_same(got, alice)
    assert got.owner == "token:ops" and restarted.list()[1].owner == ""
    assert restarted.get("carol") is None


def test_files_are_private(kind: str, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        open_at(kind, tmp_path / "new").put(voiceprint("alice"))
    finally:
        os.umask(old)
    files = sorted(p.name for p in (tmp_path / "new").iterdir())
    # json: the file and its lock; sqlite: the database, its write-ahead log and shared memory
    assert files == {"json": ["speakers.json", "speakers.json.lock"],
                     "sqlite": ["voiceprints.sqlite3", "voiceprints.sqlite3-shm",
                                "voiceprints.sqlite3-wal"]}[kind]
    for name in files:
        assert stat.S_IMODE((tmp_path / "new" / name).stat().st_mode) == 0o600, name


def test_reenrolment_overwrites(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    store.put(voiceprint("alice", 1))
    newer = voiceprint("alice", 5, name="Alice B.")
    store.put(newer)
    assert len(store.list()) == 1
    got = open_at(kind, tmp_path).get("alice")
    assert got is not None
    assert_same(got, newer)


def test_delete(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    created = store.total_changes() if isinstance(store, SqliteVoiceprintStore) else 0
    assert store.delete("nobody") is False
    if isinstance(store, SqliteVoiceprintStore):
        assert store.total_changes() == created  # nothing changed, nothing written
    else:
        assert not store.path.exists()
    store.put(voiceprint("alice", 1))
    store.put(voiceprint("bob", 2))
    assert store.delete("alice") is True
    assert store.delete("alice") is False
    assert [vp.speaker_id for vp in open_at(kind, tmp_path).list()] == ["bob"]


def test_returned_voiceprints_are_copies(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    store.put(voiceprint("alice"))
    got = store.get("alice")
    assert got is not None
    got.embedding[:] = 0
    again = store.get("alice")
    assert again is not None and np.any(again.embedding)


def test_bad_voiceprints_are_refused(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    with pytest.raises(ValueError, match="speaker id"):
        store.put(voiceprint(""))
    with pytest.raises(ValueError, match="lone surrogates"):
        store.put(voiceprint("x\ud800y"))
    bad = voiceprint("alice")
    bad.embedding[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        store.put(bad)
    assert store.list() == []


def test_unreadable_file_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    path.write_text("{not json")
    with pytest.raises(VoiceprintFileError, match="cannot read"):
        JsonVoiceprintStore(path)
    path.write_text(json.dumps({"users": []}))
    with pytest.raises(VoiceprintFileError, match="not an asrhub voiceprint file"):
        JsonVoiceprintStore(path)


def test_two_stores_on_one_file_see_each_other(kind: str, tmp_path: Path) -> None:
    """The server's store and the CLI's store: neither loses the other's enrolment."""
    server, cli = open_at(kind, tmp_path), open_at(kind, tmp_path)
    server.put(voiceprint("alice", 1))
    cli.put(voiceprint("bob", 2))  # re-reads the file before writing: alice survives
    assert [vp.speaker_id for vp in server.list()] == ["alice", "bob"]
    assert cli.delete("alice")
    assert server.get("alice") is None
    server.put(voiceprint("carol", 3))  # and a change made after the other's is not lost
    assert [vp.speaker_id for vp in cli.list()] == ["bob", "carol"]


def test_concurrent_writers_lose_nothing(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    writer = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_voiceprint_store import open_at, voiceprint
        store = open_at({kind!r}, Path({str(tmp_path)!r}))
        for i in range(15):
            store.put(voiceprint(f"{{sys.argv[1]}}-{{i}}", i))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer, tag]) for tag in ("p1", "p2")]
    threads = [threading.Thread(target=lambda t=t: [store.put(voiceprint(f"{t}-{i}", i)) for i in range(15)])
               for t in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(open_at(kind, tmp_path).list()) == 60 == len(store.list())


WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from asrhub.engine import Voiceprint
sys.path.insert(0, sys.argv[3])
from test_voiceprint_store import open_at
store = open_at(sys.argv[1], Path(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    vec = np.random.default_rng(i).normal(size=256).astype(np.float32)
    store.put(Voiceprint(f"loop-{i % 50}", "Loop", vec, time.time(), 1.0, "resemblyzer"))
    i += 1
"""


def test_kill_9_mid_write_leaves_a_whole_store(kind: str, tmp_path: Path) -> None:
    store = open_at(kind, tmp_path)
    path = tmp_path / FILE_NAMES[kind]
    for i in range(80):  # a ~0.5 MB JSON file, so that a write takes long enough to be interrupted
        store.put(voiceprint(f"bulk-{i}", i))
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(tmp_path),
                                 str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.137 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if kind == "json":
            assert len(json.loads(path.read_text())["speakers"]) >= 80  # never torn
        else:
            with contextlib.closing(sqlite3.connect(path)) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert db.execute("SELECT count(*) FROM voiceprints").fetchone()[0] >= 80
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reopened = open_at(kind, tmp_path)
        assert reopened.get("bulk-79") is not None and len(reopened.list()) >= 80
    if kind == "sqlite":
        return
    # a killed JSON writer may leave its temp file behind; the next write removes it
    store.put(voiceprint("after"))
    assert not list(tmp_path.glob(".speakers.json.*.tmp"))

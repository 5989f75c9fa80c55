"""The "json" voiceprint store: persistence, atomic writes, permissions, sharing between processes."""

from __future__ import annotations

import json
import os
import signal
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
from asrhub_plugins.speakers.store import JsonVoiceprintStore, VoiceprintFileError


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
    assert isinstance(store, VoiceprintStore)
    assert store.path == tmp_path / "state" / "speakers.json"
    configured = make_hub({"engines": {"json": {"path": str(tmp_path / "x" / "vp.json")}}}, only=[])
    assert configured.engine_sync("voiceprints").path == tmp_path / "x" / "vp.json"


def test_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    store = JsonVoiceprintStore(path)
    assert store.list() == [] and not path.exists()
    alice, bob = voiceprint("alice", 1, name="爱丽丝"), voiceprint("bob", 2)
    store.put(alice)
    store.put(bob)
    store.close()
    restarted = JsonVoiceprintStore(path)  # a new process would do exactly this
    assert [vp.speaker_id for vp in restarted.list()] == ["alice", "bob"]
    got = restarted.get("alice")
    assert got is not None
    assert_same(got, alice)
    assert restarted.get("carol") is None


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    os.umask(0o022)
    JsonVoiceprintStore(path).put(voiceprint("alice"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reenrolment_overwrites(tmp_path: Path) -> None:
    store = JsonVoiceprintStore(tmp_path / "speakers.json")
    store.put(voiceprint("alice", 1))
    newer = voiceprint("alice", 5, name="Alice B.")
    store.put(newer)
    assert len(store.list()) == 1
    got = JsonVoiceprintStore(tmp_path / "speakers.json").get("alice")
    assert got is not None
    assert_same(got, newer)


def test_delete(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    store = JsonVoiceprintStore(path)
    assert store.delete("nobody") is False
    assert not path.exists()  # nothing changed, nothing written
    store.put(voiceprint("alice", 1))
    store.put(voiceprint("bob", 2))
    assert store.delete("alice") is True
    assert store.delete("alice") is False
    assert [vp.speaker_id for vp in JsonVoiceprintStore(path).list()] == ["bob"]


def test_returned_voiceprints_are_copies(tmp_path: Path) -> None:
    store = JsonVoiceprintStore(tmp_path / "speakers.json")
    store.put(voiceprint("alice"))
    got = store.get("alice")
    assert got is not None
    got.embedding[:] = 0
    again = store.get("alice")
    assert again is not None and np.any(again.embedding)


def test_bad_voiceprints_are_refused(tmp_path: Path) -> None:
    store = JsonVoiceprintStore(tmp_path / "speakers.json")
    with pytest.raises(ValueError, match="speaker id"):
        store.put(voiceprint(""))
    bad = voiceprint("alice")
    bad.embedding[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        store.put(bad)


def test_unreadable_file_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    path.write_text("{not json")
    with pytest.raises(VoiceprintFileError, match="cannot read"):
        JsonVoiceprintStore(path)
    path.write_text(json.dumps({"users": []}))
    with pytest.raises(VoiceprintFileError, match="not an asrhub voiceprint file"):
        JsonVoiceprintStore(path)


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    """The server's store and the CLI's store: neither loses the other's enrolment."""
    path = tmp_path / "speakers.json"
    server, cli = JsonVoiceprintStore(path), JsonVoiceprintStore(path)
    server.put(voiceprint("alice", 1))
    cli.put(voiceprint("bob", 2))  # re-reads the file before writing: alice survives
    assert [vp.speaker_id for vp in server.list()] == ["alice", "bob"]
    assert cli.delete("alice")
    assert server.get("alice") is None


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    store = JsonVoiceprintStore(path)
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_voiceprint_store import voiceprint
        from asrhub_plugins.speakers.store import JsonVoiceprintStore
        store = JsonVoiceprintStore({str(path)!r})
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
    assert len(JsonVoiceprintStore(path).list()) == 60


WRITER = """
import sys, time
import numpy as np
from asrhub.engine import Voiceprint
from asrhub_plugins.speakers.store import JsonVoiceprintStore
store = JsonVoiceprintStore(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    vec = np.random.default_rng(i).normal(size=256).astype(np.float32)
    store.put(Voiceprint(f"loop-{i % 50}", "Loop", vec, time.time(), 1.0, "resemblyzer"))
    i += 1
"""


def test_kill_9_mid_write_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "speakers.json"
    store = JsonVoiceprintStore(path)
    for i in range(80):  # a ~0.5 MB file, so that a write takes long enough to be interrupted
        store.put(voiceprint(f"bulk-{i}", i))
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.137 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = json.loads(path.read_text())  # never torn
        assert len(data["speakers"]) >= 80
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert JsonVoiceprintStore(path).get("bulk-79") is not None
    # a killed writer may leave its temp file behind; the next write removes it
    store.put(voiceprint("after"))
    assert not list(tmp_path.glob(".speakers.json.*.tmp"))

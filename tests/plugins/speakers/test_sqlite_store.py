"""What only the "sqlite" voiceprint store does: a change writes one row, the JSON file is
imported once, matching from the in-memory matrix agrees with matching over every voiceprint,
threads share one store, and a real ``asrhub serve`` keeps voiceprints across a kill -9.
(What both stores must do: test_voiceprint_store.py, run on both.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf
import structlog

from asrhub.speakers import closest
from asrhub.testing import free_port, make_hub
from asrhub_plugins.speakers.sqlite_store import SqliteVoiceprintStore, VoiceprintDatabaseError
from asrhub_plugins.speakers.store import JsonVoiceprintStore, VoiceprintFileError

from .test_voiceprint_store import assert_same, voiceprint

WAL_FRAME = 4096 + 24  # default page size + frame header


def test_a_change_writes_one_row_not_the_table(tmp_path: Path) -> None:
    """The issue's case: 176 voiceprints (the JSON file is ~558 KB and rewritten per change)."""
    path = tmp_path / "voiceprints.sqlite3"
    store = SqliteVoiceprintStore(path)
    for i in range(176):
        store.put(voiceprint(f"user-{i:03d}", i))
    wal = path.with_name(path.name + "-wal")
    table_bytes = path.stat().st_size + wal.stat().st_size
    json_store = JsonVoiceprintStore(tmp_path / "speakers.json")
    for vp in store.list():
        json_store.put(vp)
    json_bytes = json_store.path.stat().st_size

    written_per_change = []
    for change in (lambda: store.put(voiceprint("newcomer", 999)),      # insert
                   lambda: store.put(voiceprint("user-042", 1000)),     # overwrite
                   lambda: store.delete("user-007")):                   # delete
        with contextlib.closing(sqlite3.connect(path)) as db:  # empty the WAL: it then holds this change only
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert wal.stat().st_size == 0
        changes = store.total_changes()
        change()
        assert store.total_changes() - changes == 1  # one row, nothing else rewritten
        written = wal.stat().st_size
        # a few B-tree pages of one ~1 KB row (+ the WAL header); the JSON store writes the whole file
        assert 0 < written <= 32 + 4 * WAL_FRAME < table_bytes / 10, (written, table_bytes)
        written_per_change.append(written)
    print(f"insert/overwrite/delete wrote {written_per_change} B to the WAL; "
          f"the JSON store rewrites {json_bytes} B per change")
    assert json_bytes > 500_000
    assert len(SqliteVoiceprintStore(path).list()) == 176


def test_embeddings_are_float32_blobs(tmp_path: Path) -> None:
    path = tmp_path / "voiceprints.sqlite3"
    store = SqliteVoiceprintStore(path)
    alice = voiceprint("alice", 1)
    before = time.time()
    store.put(alice)
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT dims, embedding, owner, created_at, updated_at FROM voiceprints"
                         " WHERE speaker_id = 'alice'").fetchone()
    dims, blob, owner, created_at, updated_at = row
    assert dims == 256 and len(blob) == 256 * 4 and owner == ""
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4"), alice.embedding)
    assert created_at == alice.created_at and updated_at >= before


# ---------------------------------------------------------------------------- import from JSON


def legacy_json(path: Path, count: int) -> list:
    store = JsonVoiceprintStore(path)
    for i in range(count):
        store.put(voiceprint(f"legacy-{i}", i, name=f"旧 {i}"))
    return list(store.list())


def test_first_start_imports_the_json_file_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    originals = legacy_json(state / "speakers.json", 5)
    with structlog.testing.capture_logs() as logs:
        hub = make_hub({"server": {"state_dir": str(state)}}, only=[])
        store = hub.engine_sync("voiceprints")
    assert isinstance(store, SqliteVoiceprintStore)
    got = store.list()
    assert len(got) == 5
    for a, b in zip(got, originals, strict=True):
        assert_same(a, b)
    imported = [e for e in logs if e["event"] == "voiceprints_imported"]
    assert len(imported) == 1 and imported[0]["count"] == 5
    assert imported[0]["renamed_to"] == str(state / "speakers.json.imported")
    # the JSON file is kept, renamed so that nothing goes on using a copy that no longer changes
    assert not (state / "speakers.json").exists()
    assert len(json.loads((state / "speakers.json.imported").read_text())["speakers"]) == 5

    store.delete("legacy-0")
    store.close()
    # a JSON file that shows up later is not imported again: the database is the store now
    legacy_json(state / "speakers.json", 2)
    with structlog.testing.capture_logs() as logs:
        again = make_hub({"server": {"state_dir": str(state)}}, only=[]).engine_sync("voiceprints")
    assert not [e for e in logs if e["event"] == "voiceprints_imported"]
    assert [vp.speaker_id for vp in again.list()] == [f"legacy-{i}" for i in range(1, 5)]
    assert (state / "speakers.json").exists()


def test_the_configured_json_path_is_imported_and_none_imports_nothing(tmp_path: Path) -> None:
    legacy_json(tmp_path / "old" / "vp.json", 3)
    store = make_hub({"server": {"state_dir": str(tmp_path / "a")},
                      "engines": {"json": {"path": str(tmp_path / "old" / "vp.json")}}},
                     only=[]).engine_sync("voiceprints")
    assert len(store.list()) == 3 and (tmp_path / "old" / "vp.json.imported").exists()

    legacy_json(tmp_path / "b" / "speakers.json", 3)
    store = make_hub({"server": {"state_dir": str(tmp_path / "b")},
                      "engines": {"sqlite": {"import_json": "none"}}}, only=[]).engine_sync("voiceprints")
    assert store.list() == [] and (tmp_path / "b" / "speakers.json").exists()


def test_a_failed_import_creates_nothing_and_is_retried(tmp_path: Path) -> None:
    source, path = tmp_path / "speakers.json", tmp_path / "voiceprints.sqlite3"
    source.write_text("{not json")
    with pytest.raises(VoiceprintFileError, match="cannot read"):
        SqliteVoiceprintStore(path, import_json=source)
    with contextlib.closing(sqlite3.connect(path)) as db:  # the schema transaction rolled back
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    legacy_json(source.with_name("good.json"), 2)
    data = json.loads(source.with_name("good.json").read_text())
    data["speakers"]["legacy-1"]["embedding"][0] = None  # not a number: refused, nothing imported
    source.write_text(json.dumps(data))
    with pytest.raises(VoiceprintFileError, match="'legacy-1' cannot be imported"):
        SqliteVoiceprintStore(path, import_json=source)
    source.unlink()
    legacy_json(source, 2)
    assert len(SqliteVoiceprintStore(path, import_json=source).list()) == 2


def test_a_database_it_cannot_read_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(VoiceprintDatabaseError, match="not a usable voiceprint database"):
        SqliteVoiceprintStore(garbage)
    other = tmp_path / "other.sqlite3"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE users (id TEXT)")
        db.commit()
    with pytest.raises(VoiceprintDatabaseError, match="not an asrhub voiceprint database"):
        SqliteVoiceprintStore(other)
    newer = tmp_path / "newer.sqlite3"
    SqliteVoiceprintStore(newer).close()
    with contextlib.closing(sqlite3.connect(newer)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(VoiceprintDatabaseError, match="schema 99 is not supported"):
        SqliteVoiceprintStore(newer)


# ---------------------------------------------------------------------------- matching


def test_matching_from_the_matrix_agrees_with_matching_over_every_voiceprint(tmp_path: Path) -> None:
    store = SqliteVoiceprintStore(tmp_path / "voiceprints.sqlite3")
    other = SqliteVoiceprintStore(tmp_path / "voiceprints.sqlite3")  # another process, say

    def check() -> None:
        everything = store.list()
        for seed in range(40):
            query = voiceprint("q", 10_000 + seed).embedding
            if seed % 4 == 0 and everything:  # near an enrolled voice
                query = everything[seed % len(everything)].embedding + 0.05 * query
            for engine in (None, "resemblyzer", "campplus", "nobody"):
                fast, slow = closest(query, store, engine=engine), closest(query, everything, engine=engine)
                assert (fast is None) == (slow is None)
                if fast is not None and slow is not None:
                    assert fast.speaker_id == slow.speaker_id and fast.name == slow.name
                    assert fast.score == pytest.approx(slow.score, abs=1e-5)

    assert closest(voiceprint("q").embedding, store) is None
    for i in range(30):
        store.put(voiceprint(f"s{i:02d}", i))
    campplus = voiceprint("cam", 77)
    campplus.engine = "campplus"
    store.put(campplus)
    store.put(voiceprint("small", 5, dim=192))  # another embedding size: never compared
    check()
    store.put(voiceprint("s03", 300))  # overwritten: the matrix row changes
    store.delete("s10")
    store.delete("cam")
    other.put(voiceprint("from-elsewhere", 500))  # seen through data_version
    other.delete("s20")
    check()
    me = store.get("from-elsewhere")
    assert me is not None
    best = closest(me.embedding, store)
    assert best is not None and best.speaker_id == "from-elsewhere" and best.score == pytest.approx(1.0)
    assert closest(voiceprint("q", dim=100).embedding, store) is None


def test_concurrent_registrations_from_threads(tmp_path: Path) -> None:
    """The store is called from executor threads and from the loop at once."""
    path = tmp_path / "voiceprints.sqlite3"
    store = SqliteVoiceprintStore(path)
    errors: list[BaseException] = []

    def register(tag: int) -> None:
        try:
            for i in range(25):
                store.put(voiceprint(f"t{tag}-{i}", tag * 100 + i))
                if i % 5 == 4:
                    store.put(voiceprint(f"t{tag}-{i - 1}", 9000 + tag * 100 + i))  # overwrite
                    assert store.delete(f"t{tag}-{i - 2}")
                closest(voiceprint("probe", i).embedding, store)
                store.count()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(tag,)) for tag in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    expected = {f"t{tag}-{i}" for tag in range(8) for i in range(25) if i % 5 != 2}
    assert {vp.speaker_id for vp in store.list()} == expected
    reopened = SqliteVoiceprintStore(path)
    assert {vp.speaker_id for vp in reopened.list()} == expected
    for vp in reopened.list():  # the overwritten ones too: cache, matrix and rows agree
        cached = store.get(vp.speaker_id)
        assert cached is not None
        assert_same(cached, vp)
        best = closest(vp.embedding, store)
        assert best is not None and best.speaker_id == vp.speaker_id
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_check_config_accepts_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from asrhub.cli import main

    good = tmp_path / "good.toml"
    good.write_text(f'[engines]\nvoiceprints = "sqlite"\n\n[engines.sqlite]\npath = "{tmp_path / "v.db"}"\n'
                    'import_json = "none"\nbusy_timeout_s = 5.0\n')
    assert main(["check-config", "--config", str(good)]) == 0
    assert "engine voiceprints  sqlite" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[engines.sqlite]\npaht = "x"\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "unknown key 'paht'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- a real server


class Serve:
    """``asrhub serve --config <toml>`` as a child process, vad_stream only."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / "serve.log"
        self.state = tmp / "state"
        from asrhub.config import parse_config
        from asrhub.hub import Hub
        from asrhub.plugins import make_plugin_manager

        others = [name for name in Hub(parse_config({}), make_plugin_manager()).protocols
                  if name != "vad_stream"]
        lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{self.state}"', 'log_format = "json"',
                 "[engines]", 'asr = "whisper"', 'vad = "silero"', 'speaker = "resemblyzer"',
                 "[engines.whisper]", 'model = "tiny.en"', 'language = "en"',
                 "[protocols.vad_stream]", f"port = {self.port}",
                 "[protocols.vad_stream.static]", f"port = {free_port()}"]
        lines += [f"[protocols.{name}]\nenabled = false" for name in others]
        self.config = tmp / "asrhub.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        exe = shutil.which("asrhub", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "asrhub.cli"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*cmd, "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        for _ in range(450):  # up to ~90 s
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                ws = await session.ws_connect(f"ws://127.0.0.1:{self.port}")
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
                continue
            await ws.close()
            return
        raise AssertionError("the server did not start: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


async def ask(ws: aiohttp.ClientWebSocketResponse, wanted: tuple[str, ...], *sends: object) -> dict:
    for item in sends:
        await (ws.send_bytes(item) if isinstance(item, bytes) else ws.send_str(json.dumps(item)))
    for _ in range(500):
        message = json.loads(await ws.receive_str(timeout=120))
        if message.get("type") in (*wanted, "error"):
            return message
    raise AssertionError(f"no {wanted} in 500 messages")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_voiceprints_survive_a_kill_9_of_a_real_server(tmp_path: Path, testdata: Path) -> None:
    legacy_json(tmp_path / "state" / "speakers.json", 2)  # an installation upgraded from "json"
    server = Serve(tmp_path)
    audio, rate = sf.read(testdata / "en" / "speechbrain_spk1_snt2.wav", dtype="int16")
    assert rate == 16000
    pcm = audio.tobytes()
    try:
        async with aiohttp.ClientSession() as session:
            await server.start(session)
            ws = await session.ws_connect(f"ws://127.0.0.1:{server.port}")
            listed = await ask(ws, ("speaker_list",), {"command": "speaker_list"})
            assert [s["user_id"] for s in listed["speakers"]] == ["legacy-0", "legacy-1"], listed
            done = await ask(ws, ("speaker_register_result",),
                             {"command": "speaker_register_start", "user_id": "alice"},
                             *[pcm[i:i + 6400] for i in range(0, len(pcm), 6400)],
                             {"command": "speaker_register_end"})
            assert done["type"] == "speaker_register_result" and done["success"] is True, done
            # another process (`asrhub speakers enroll` would be one) changes the same database
            cli = SqliteVoiceprintStore(server.state / "voiceprints.sqlite3")
            cli.put(voiceprint("bob", 2))
            assert cli.delete("legacy-1")
            listed = await ask(ws, ("speaker_list",), {"command": "speaker_list"})
            assert [s["user_id"] for s in listed["speakers"]] == ["alice", "bob", "legacy-0"], listed
            await ws.close()

            server.kill()
            assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
            await server.start(session)
            ws = await session.ws_connect(f"ws://127.0.0.1:{server.port}")
            listed = await ask(ws, ("speaker_list",), {"command": "speaker_list"})
            assert [s["user_id"] for s in listed["speakers"]] == ["alice", "bob", "legacy-0"], listed
            alice = next(s for s in listed["speakers"] if s["user_id"] == "alice")
            assert alice["dimension"] == 256
            enabled = await ask(ws, ("speaker_verify_enabled",),
                                {"command": "speaker_verify_enable", "user_id": "alice"})
            assert enabled["type"] == "speaker_verify_enabled", enabled
            await ws.close()
    finally:
        server.kill()
    log = server.log.read_text()
    assert log.count('"voiceprints_imported"') == 1 and "Traceback" not in log
    assert stat.S_IMODE((server.state / "voiceprints.sqlite3").stat().st_mode) == 0o600
    assert os.path.exists(server.state / "speakers.json.imported")

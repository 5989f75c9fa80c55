"""`asrhub speakers list|enroll|delete` as a user runs it: a subprocess with a config file."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "asrhub.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n\n[engines]\nvoiceprints = "json"\n\n'
                   f'[engines.json]\npath = "{tmp_path / "voiceprints" / "speakers.json"}"\n')
    return cfg


def rows(stdout: str) -> list[list[str]]:
    # only the tab-separated rows: the CLI also logs engine_loaded to stdout (see the test below)
    return [line.split("\t") for line in stdout.splitlines() if "\t" in line]


def asrhub(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asrhub.cli", "speakers", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300)


def test_enroll_list_overwrite_delete(config: Path, tmp_path: Path, testdata: Path) -> None:
    store = tmp_path / "voiceprints" / "speakers.json"
    clips = testdata / "zh"
    done = asrhub(config, "enroll", "leijun", str(clips / "srdata_enroll_leijun-sr-1.wav"), "--name", "雷军")
    assert done.returncode == 0, done.stderr
    assert "enrolled leijun (4.2 s)" in done.stdout
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert not (tmp_path / "state" / "speakers.json").exists()  # the configured path wins

    listing = asrhub(config, "list")
    assert listing.returncode == 0, listing.stderr
    assert rows(listing.stdout) == [["leijun", "雷军", "4.2s", "resemblyzer"]]

    # re-enrolment overwrites the voiceprint, and keeps the others
    store_data = json.loads(store.read_text())
    store_data["speakers"]["other"] = dict(store_data["speakers"]["leijun"], name="Other")
    store.write_text(json.dumps(store_data))
    first = np.asarray(store_data["speakers"]["leijun"]["embedding"])
    done = asrhub(config, "enroll", "leijun", str(clips / "srdata_enroll_leijun-sr-2.wav"))
    assert done.returncode == 0, done.stderr
    data = json.loads(store.read_text())["speakers"]
    assert sorted(data) == ["leijun", "other"]
    assert data["leijun"]["name"] == "leijun" and data["leijun"]["audio_seconds"] == pytest.approx(4.76, abs=0.01)
    second = np.asarray(data["leijun"]["embedding"])
    assert 0.69 < float(first @ second) < 0.9999  # same speaker, another recording

    done = asrhub(config, "delete", "leijun")
    assert done.returncode == 0 and "deleted leijun" in done.stdout
    done = asrhub(config, "delete", "leijun")
    assert done.returncode == 1 and "no speaker 'leijun'" in done.stderr
    assert [row[0] for row in rows(asrhub(config, "list").stdout)] == ["other"]


def test_enrolling_silence_fails_cleanly(config: Path, tmp_path: Path) -> None:
    import soundfile as sf

    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(48000, np.float32), 16000)
    done = asrhub(config, "enroll", "nobody", str(silent))
    assert done.returncode == 2
    assert "too little speech" in done.stderr and "Traceback" not in done.stderr


def test_list_prints_only_the_rows(config: Path) -> None:
    listing = asrhub(config, "list")
    assert listing.returncode == 0 and listing.stdout == ""


def test_list_and_delete_on_the_default_sqlite_store(tmp_path: Path) -> None:
    from asrhub_plugins.speakers.sqlite_store import SqliteVoiceprintStore

    from .test_voiceprint_store import voiceprint

    cfg = tmp_path / "default.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    store = SqliteVoiceprintStore(tmp_path / "state" / "voiceprints.sqlite3")
    store.put(voiceprint("alice", 1, name="爱丽丝"))
    store.put(voiceprint("bob", 2))
    assert rows(asrhub(cfg, "list").stdout) == [["alice", "爱丽丝", "4.2s", "resemblyzer"],
                                              ["bob", "Bob", "4.2s", "resemblyzer"]]
    done = asrhub(cfg, "delete", "alice")
    assert done.returncode == 0 and "deleted alice" in done.stdout
    assert [vp.speaker_id for vp in store.list()] == ["bob"]  # the server's store sees it


@pytest.mark.slow
def test_enroll_over_a_clients_voiceprint_keeps_its_owner(tmp_path: Path, testdata: Path) -> None:
    """The shell may replace any voiceprint (it is the machine's admin), on the owner's behalf:
    the client token's scope that registered it keeps it."""
    from asrhub_plugins.speakers.sqlite_store import SqliteVoiceprintStore

    from .test_voiceprint_store import voiceprint

    cfg = tmp_path / "default.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    store = SqliteVoiceprintStore(tmp_path / "state" / "voiceprints.sqlite3")
    owned = voiceprint("leijun", 1)
    owned.owner = "0123456789abcdef"
    store.put(owned)
    done = asrhub(cfg, "enroll", "leijun", str(testdata / "zh" / "srdata_enroll_leijun-sr-1.wav"))
    assert done.returncode == 0, done.stderr
    got = store.get("leijun")
    assert got is not None and got.owner == "0123456789abcdef"
    assert not np.array_equal(got.embedding, owned.embedding)  # replaced
    done = asrhub(cfg, "enroll", "newcomer", str(testdata / "zh" / "srdata_enroll_leijun-sr-2.wav"))
    assert done.returncode == 0, done.stderr
    assert store.get("newcomer").owner == ""  # the shell owns nothing it creates

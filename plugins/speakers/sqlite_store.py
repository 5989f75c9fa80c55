"""Voiceprint store "sqlite" (the default): one SQLite database, default
``<state_dir>/voiceprints.sqlite3``, one row per voiceprint.

- A change is one transaction on one row (``INSERT ... ON CONFLICT DO UPDATE`` or ``DELETE``):
  its cost is one speaker's bytes, not the whole table (the "json" store rewrites everything).
  WAL journal, ``synchronous = FULL``: a change is on disk when ``put``/``delete`` return, and a
  crash (even kill -9) mid-write leaves the previous state.
- The database, its ``-wal`` and ``-shm`` files are mode 0600 (voiceprints are biometric data);
  a directory the store creates is 0700.
- The whole table is kept in memory, with one unit-length float32 matrix per embedding size,
  updated in place per change: :meth:`closest` (what protocols use to identify a speaker) is one
  matrix-vector product and never reads the database.
- Several processes may share the database (the server and ``asrhub speakers enroll``):
  ``PRAGMA data_version`` tells when another connection committed, and the cache is reloaded
  before the next read or write.
- One connection per store, used under a lock: the store is called from executor threads and
  from the event loop.
- First start (the database does not exist yet) with a "json" store file present: its voiceprints
  are imported in the transaction that creates the schema, the import is logged, and the JSON
  file is renamed ``<name>.imported`` (kept, never deleted).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from asrhub.engine import EngineError, Voiceprint
from asrhub.speakers import Match
from asrhub_plugins.speakers.store import (
    JsonVoiceprintStore,
    VoiceprintFileError,
    copy_voiceprint,
    validated_voiceprint,
)

if TYPE_CHECKING:
    from asrhub.hub import Hub

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
IMPORTED_SUFFIX = ".imported"

_SCHEMA = """
CREATE TABLE voiceprints (
    speaker_id    TEXT PRIMARY KEY,
    owner         TEXT NOT NULL DEFAULT '',
    name          TEXT NOT NULL,
    engine        TEXT NOT NULL,
    dims          INTEGER NOT NULL,
    embedding     BLOB NOT NULL,
    audio_seconds REAL NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "speaker_id, owner, name, engine, dims, embedding, audio_seconds, created_at"


@dataclass(frozen=True)
class SqliteStoreSettings:
    path: str = ""  # "" → <[server] state_dir>/voiceprints.sqlite3
    # The "json" store file imported once, when the database is created: "" → the "json" store's
    # file ([engines.json] path, default <state_dir>/speakers.json); "none" → import nothing.
    import_json: str = ""
    # Seconds a change waits for another process's transaction before failing.
    busy_timeout_s: float = 10.0


class VoiceprintDatabaseError(EngineError):
    """The voiceprint database exists but cannot be used (corrupt, newer schema, unreadable)."""


class _Index:
    """Every voiceprint in memory, and per (embedding size, engine) a matrix of unit-length rows
    (a voiceprint is only ever compared within its own engine's embedding space)."""

    def __init__(self) -> None:
        self.voiceprints: dict[str, Voiceprint] = {}
        self._ids: dict[tuple[int, str], list[str]] = {}  # row order of each matrix
        self._rows: dict[tuple[int, str], npt.NDArray[np.float32]] = {}

    @staticmethod
    def _group(vp: Voiceprint) -> tuple[int, str]:
        return vp.embedding.shape[0], vp.engine

    def replace_all(self, voiceprints: Sequence[Voiceprint]) -> None:
        self.voiceprints, self._ids, self._rows = {}, {}, {}
        groups: dict[tuple[int, str], list[Voiceprint]] = {}
        for vp in voiceprints:
            self.voiceprints[vp.speaker_id] = vp
            groups.setdefault(self._group(vp), []).append(vp)
        for key, group in groups.items():
            self._ids[key] = [vp.speaker_id for vp in group]
            self._rows[key] = np.stack([_unit(vp.embedding) for vp in group])

    def put(self, vp: Voiceprint) -> None:
        self.remove(vp.speaker_id)
        self.voiceprints[vp.speaker_id] = vp
        key, row = self._group(vp), _unit(vp.embedding)[None, :]
        self._ids.setdefault(key, []).append(vp.speaker_id)
        self._rows[key] = np.concatenate([self._rows[key], row]) if key in self._rows else row

    def remove(self, speaker_id: str) -> bool:
        old = self.voiceprints.pop(speaker_id, None)
        if old is None:
            return False
        key = self._group(old)
        at = self._ids[key].index(speaker_id)
        del self._ids[key][at]
        if self._ids[key]:
            self._rows[key] = np.delete(self._rows[key], at, axis=0)
        else:
            del self._ids[key], self._rows[key]
        return True

    def closest(self, embedding: npt.NDArray[np.float32], engine: str | None) -> Match | None:
        """As :func:`asrhub.speakers.closest`: the highest cosine among voiceprints of the same
        size (and engine), ties to the smallest id."""
        query = np.asarray(embedding, dtype=np.float32)
        if query.ndim != 1:
            return None
        unit = _unit(query)
        best: tuple[float, str] | None = None
        for (dim, name), rows in self._rows.items():
            if dim != query.shape[0] or (engine is not None and name != engine):
                continue
            scores = rows @ unit
            top = float(scores.max())
            speaker_id = min(self._ids[(dim, name)][i] for i in np.flatnonzero(scores == top))
            if best is None or top > best[0] or (top == best[0] and speaker_id < best[1]):
                best = (top, speaker_id)
        if best is None:
            return None
        return Match(best[1], self.voiceprints[best[1]].name, best[0])


def _unit(vec: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(vec))
    return (vec / norm).astype(np.float32) if norm > 0 else np.zeros_like(vec, dtype=np.float32)


class SqliteVoiceprintStore:
    name = "sqlite"

    def __init__(self, path: str | Path, *, import_json: str | Path | None = None,
                 busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.model_name = str(self.path)
        self._lock = threading.Lock()
        self._index = _Index()
        self._data_version = -1
        self._open_private_file()
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise VoiceprintDatabaseError(f"{self.path}: cannot open: {exc}") from exc
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                imported = self._create_or_check(Path(import_json).expanduser() if import_json else None)
                self._reload()
        except sqlite3.Error as exc:
            self._db.close()
            raise VoiceprintDatabaseError(f"{self.path}: not a usable voiceprint database: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        if imported is not None:
            self._retire_imported(*imported)

    # ------------------------------------------------------------------ opening

    def _open_private_file(self) -> None:
        """Create the database file 0600 before SQLite does (its -wal/-shm files copy the main
        file's mode), in a directory created 0700."""
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (the write lock, waiting up to busy_timeout_s) ... COMMIT, or ROLLBACK
        on any error. Caller holds the thread lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed: never leave one open
                self._db.execute("ROLLBACK")
            raise

    def _create_or_check(self, json_path: Path | None) -> tuple[Path, int] | None:
        """Create the schema (and import the JSON store's file) in one transaction, or check the
        schema of an existing database. Returns (json file, count) when it imported."""
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return None
            if version != 0:
                raise VoiceprintDatabaseError(
                    f"{self.path}: voiceprint database schema {version} is not supported "
                    f"(this asrhub reads schema {SCHEMA_VERSION})")
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise VoiceprintDatabaseError(f"{self.path}: not an asrhub voiceprint database")
            # one statement at a time: executescript() would COMMIT the open transaction
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            now = time.time()
            db.execute("INSERT INTO meta VALUES ('created_at', ?)", (repr(now),))
            imported = None
            if json_path is not None and json_path.exists():
                voiceprints = JsonVoiceprintStore(json_path).list()
                for vp in voiceprints:
                    try:
                        checked = validated_voiceprint(vp)
                    except ValueError as exc:
                        raise VoiceprintFileError(f"{json_path}: voiceprint {vp.speaker_id!r} cannot be "
                                                  f"imported: {exc}") from None
                    self._write_row(db, checked, now)
                db.execute("INSERT INTO meta VALUES ('imported_json', ?)", (str(json_path),))
                imported = (json_path, len(voiceprints))
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return imported

    def _retire_imported(self, json_path: Path, count: int) -> None:
        """After the import committed: rename the JSON file so that nothing keeps using a copy
        that no longer changes (a crash before this line only leaves it under its old name)."""
        target = json_path.with_name(json_path.name + IMPORTED_SUFFIX)
        try:
            os.replace(json_path, target)
        except OSError as exc:
            log.warning("voiceprints_imported", source=str(json_path), database=str(self.path),
                        count=count, renamed_to=None, rename_error=str(exc))
            return
        log.warning("voiceprints_imported", source=str(json_path), database=str(self.path),
                    count=count, renamed_to=str(target))

    # ------------------------------------------------------------------ cache

    def _reload(self) -> None:
        """Read every row into the cache. Caller holds the lock."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM voiceprints ORDER BY speaker_id").fetchall()
        self._index.replace_all([self._decode(row) for row in rows])
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]

    def _refresh(self) -> None:
        """Reload if another connection (another process, another store) committed since we
        last looked: one PRAGMA, microseconds. Caller holds the lock."""
        if self._db.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
            self._reload()

    def _decode(self, row: tuple[Any, ...]) -> Voiceprint:
        speaker_id, owner, name, engine, dims, blob, audio_seconds, created_at = row
        try:
            embedding = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            if embedding.shape[0] != dims:
                raise ValueError(f"embedding has {embedding.shape[0]} values, dims says {dims}")
            return Voiceprint(str(speaker_id), str(name), embedding, float(created_at),
                              float(audio_seconds), str(engine), owner=str(owner))
        except (TypeError, ValueError) as exc:
            raise VoiceprintDatabaseError(f"{self.path}: voiceprint {speaker_id!r} is malformed: {exc}") from exc

    @staticmethod
    def _write_row(db: sqlite3.Connection, vp: Voiceprint, now: float) -> None:
        db.execute(
            "INSERT INTO voiceprints (speaker_id, owner, name, engine, dims, embedding, audio_seconds,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (speaker_id) DO UPDATE SET owner = excluded.owner, name = excluded.name,"
            " engine = excluded.engine, dims = excluded.dims, embedding = excluded.embedding,"
            " audio_seconds = excluded.audio_seconds, created_at = excluded.created_at,"
            " updated_at = excluded.updated_at",
            (vp.speaker_id, vp.owner, vp.name, vp.engine, int(vp.embedding.shape[0]),
             vp.embedding.astype("<f4").tobytes(), vp.audio_seconds, vp.created_at, now))

    # ------------------------------------------------------------------ VoiceprintStore

    def list(self) -> Sequence[Voiceprint]:
        with self._lock, _errors(self.path):
            self._refresh()
            return [copy_voiceprint(vp) for _, vp in sorted(self._index.voiceprints.items())]

    def get(self, speaker_id: str) -> Voiceprint | None:
        with self._lock, _errors(self.path):
            self._refresh()
            vp = self._index.voiceprints.get(speaker_id)
            return copy_voiceprint(vp) if vp is not None else None

    def count(self) -> int:
        with self._lock, _errors(self.path):
            self._refresh()
            return len(self._index.voiceprints)

    def closest(self, embedding: npt.NDArray[np.float32], *, engine: str | None = None) -> Match | None:
        """The enrolled speaker most similar to ``embedding`` (see :func:`asrhub.speakers.closest`,
        which calls this): a matrix-vector product over the cached voiceprints."""
        with self._lock, _errors(self.path):
            self._refresh()
            return self._index.closest(embedding, engine)

    def put(self, voiceprint: Voiceprint) -> None:
        """Insert or overwrite (re-enrolment replaces the old voiceprint): one row, one transaction."""
        checked = validated_voiceprint(voiceprint)
        with self._lock, _errors(self.path):
            with self._transaction() as db:
                self._refresh()  # under the write lock: what another process wrote is not lost
                self._write_row(db, checked, time.time())
            self._index.put(checked)

    def delete(self, speaker_id: str) -> bool:
        with self._lock, _errors(self.path):
            with self._transaction() as db:
                self._refresh()
                deleted = db.execute("DELETE FROM voiceprints WHERE speaker_id = ?",
                                     (speaker_id,)).rowcount > 0
            self._index.remove(speaker_id)
            return deleted

    def total_changes(self) -> int:
        """Rows this store's connection has inserted, updated or deleted since it opened."""
        with self._lock:
            return self._db.total_changes

    def close(self) -> None:
        with self._lock:
            self._db.close()  # every change is on disk when put/delete return


@contextlib.contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise VoiceprintDatabaseError(f"{path}: voiceprint database error: {exc}") from exc


def open_store(settings: SqliteStoreSettings, hub: Hub) -> SqliteVoiceprintStore:
    path = Path(settings.path).expanduser() if settings.path else hub.state_dir / "voiceprints.sqlite3"
    if settings.import_json == "none":
        source: Path | None = None
    elif settings.import_json:
        source = Path(settings.import_json).expanduser()
    else:
        json_settings = hub.settings_for("voiceprints", "json")
        source = Path(json_settings.path).expanduser() if json_settings.path \
            else hub.state_dir / "speakers.json"
    return SqliteVoiceprintStore(path, import_json=source, busy_timeout_s=settings.busy_timeout_s)

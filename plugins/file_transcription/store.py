"""Durable state: tasks, upload chunks, cached results (SQLite) and spooled uploads (files).

Layout under ``<state_dir>/file_transcription/``::

    tasks.sqlite3            tasks, chunks, results, meta (WAL)
    uploads/<task_id>/data   the upload being received (chunks written at their offsets)
    uploads/<task_id>/audio.<ext>   the complete, verified file waiting for transcription

Directories are created 0700 (uploads are other people's recordings), files 0600.

Results are keyed by the SHA-256 of the bytes the hub received (plus the engine settings); the
client's MD5 (the seed's ``file_hash``) only finds a task of the same trust ``scope`` whose
received bytes had that MD5 and size (:meth:`TaskStore.shortcut_keys`).

Every statement is a single-row read or write on a small table, so the store is used straight
from the event loop (WAL + synchronous=NORMAL: a commit is a write to the OS, no fsync; a
killed process loses nothing that was committed). Chunk bytes are written by the caller in a
thread (:meth:`TaskStore.write_chunk`); only their record goes through SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT PRIMARY KEY,
    file_name     TEXT NOT NULL,
    file_size     INTEGER NOT NULL,
    file_hash     TEXT NOT NULL,      -- the client's MD5 (verified against the bytes received)
    cache_key     TEXT NOT NULL,      -- SHA-256 of the bytes received + engine settings ('' before)
    output_format TEXT NOT NULL,
    chunked       INTEGER NOT NULL,
    chunk_size    INTEGER NOT NULL,
    total_chunks  INTEGER NOT NULL,
    state         TEXT NOT NULL,      -- uploading | queued | running | completed | failed
    progress      REAL NOT NULL DEFAULT 0,
    duration      REAL,               -- seconds of audio, once known
    error         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    queued_at     REAL,
    started_at    REAL,
    finished_at   REAL,
    sha256        TEXT,               -- of the bytes received, once they all are
    scope         TEXT NOT NULL DEFAULT '',  -- trust scope of the client that created it
    client        TEXT NOT NULL DEFAULT '',  -- quota key (peer, token) of that client
    force_refresh INTEGER NOT NULL DEFAULT 0  -- transcribe even if the result is cached
);
CREATE TABLE IF NOT EXISTS chunks (
    task_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    md5     TEXT NOT NULL,
    PRIMARY KEY (task_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    cache_key  TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL,
    result     TEXT NOT NULL,         -- JSON: text, segments, speakers, duration
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Columns added since the first schema (ALTER TABLE on an older database), then the indexes.
ADDED_COLUMNS = {"sha256": "TEXT", "scope": "TEXT NOT NULL DEFAULT ''",
                 "client": "TEXT NOT NULL DEFAULT ''", "force_refresh": "INTEGER NOT NULL DEFAULT 0"}
INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, queued_at);
CREATE INDEX IF NOT EXISTS tasks_key ON tasks(cache_key, state);
CREATE INDEX IF NOT EXISTS tasks_md5 ON tasks(scope, file_hash, file_size, state);
CREATE INDEX IF NOT EXISTS tasks_client ON tasks(client, state);
"""
DIR_MODE = 0o700

UNFINISHED = ("uploading", "queued", "running")


@dataclass
class TaskRow:
    task_id: str
    file_name: str
    file_size: int
    file_hash: str
    cache_key: str
    output_format: str
    chunked: bool
    chunk_size: int
    total_chunks: int
    state: str
    progress: float
    duration: float | None
    error: str | None
    attempts: int
    created_at: float
    updated_at: float
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    sha256: str | None = None
    scope: str = ""
    client: str = ""
    force_refresh: bool = False

    @property
    def extension(self) -> str:
        return self.file_name.rsplit(".", 1)[-1].lower() if "." in self.file_name else "bin"


class SpoolFiles:
    """The upload spool both task stores share: ``<uploads>/<task_id>/data`` while receiving,
    ``audio.<ext>`` once complete."""

    uploads: Path

    def spool_dir(self, task_id: str) -> Path:
        return self.uploads / task_id

    def partial_path(self, task_id: str) -> Path:
        return self.spool_dir(task_id) / "data"

    def audio_path(self, task: TaskRow) -> Path:
        return self.spool_dir(task.task_id) / f"audio.{task.extension}"

    def remove_spool(self, task_id: str) -> None:
        shutil.rmtree(self.spool_dir(task_id), ignore_errors=True)


class TaskStore(SpoolFiles):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = root / "uploads"
        private_dir(root)
        private_dir(self.uploads)
        db_path = root / "tasks.sqlite3"
        if not db_path.exists():
            os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        have = {row["name"] for row in self.db.execute("PRAGMA table_info(tasks)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")
        self.db.executescript(INDEXES)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ tasks

    def create_task(self, *, task_id: str, file_name: str, file_size: int, file_hash: str,
                    output_format: str, chunked: bool, chunk_size: int, total_chunks: int,
                    scope: str = "", client: str = "", force_refresh: bool = False) -> TaskRow:
        now = time.time()
        self.db.execute(
            "INSERT INTO tasks (task_id, file_name, file_size, file_hash, cache_key, output_format,"
            " chunked, chunk_size, total_chunks, state, created_at, updated_at, scope, client,"
            " force_refresh) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, 'uploading', ?, ?, ?, ?, ?)",
            (task_id, file_name, file_size, file_hash, output_format, int(chunked),
             chunk_size, total_chunks, now, now, scope, client, int(force_refresh)))
        task = self.get(task_id)
        assert task is not None
        return task

    def get(self, task_id: str) -> TaskRow | None:
        row = self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task(row) if row is not None else None

    def find_unfinished(self, scope: str, file_hash: str, file_size: int) -> TaskRow | None:
        """The newest unfinished task of the same scope announced with this MD5 and size."""
        row = self.db.execute(
            "SELECT * FROM tasks WHERE scope = ? AND file_hash = ? AND file_size = ?"
            " AND state IN ('uploading', 'queued', 'running') ORDER BY created_at DESC LIMIT 1",
            (scope, file_hash, file_size)).fetchone()
        return _task(row) if row is not None else None

    def shortcut_keys(self, scope: str, file_hash: str, file_size: int) -> set[str]:
        """Cache keys of completed tasks of ``scope`` whose received bytes had this MD5 and size
        (more than one: an MD5 collision, and the caller answers nothing)."""
        rows = self.db.execute(
            "SELECT DISTINCT cache_key FROM tasks WHERE scope = ? AND file_hash = ? AND file_size = ?"
            " AND state = 'completed' AND sha256 IS NOT NULL AND cache_key != ''",
            (scope, file_hash, file_size)).fetchall()
        return {row["cache_key"] for row in rows}

    def pending_of(self, client: str) -> tuple[int, int]:
        """(tasks uploading or queued, their declared bytes) of one client."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(file_size), 0) FROM tasks WHERE client = ?"
            " AND state IN ('uploading', 'queued')", (client,)).fetchone()
        return int(row[0]), int(row[1])

    def reserved_bytes(self) -> int:
        """Bytes the uploads in progress have declared but not yet written."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(file_size), 0) - COALESCE((SELECT SUM(c.size) FROM chunks c"
            " JOIN tasks t ON t.task_id = c.task_id WHERE t.state = 'uploading'), 0)"
            " FROM tasks WHERE state = 'uploading'").fetchone()
        return max(0, int(row[0]))

    def update(self, task_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        columns = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE tasks SET {columns} WHERE task_id = ?", (*fields.values(), task_id))

    def tasks_in(self, *states: str) -> list[TaskRow]:
        marks = ", ".join("?" for _ in states)
        rows = self.db.execute(f"SELECT * FROM tasks WHERE state IN ({marks})"
                               " ORDER BY COALESCE(queued_at, created_at)", states).fetchall()
        return [_task(row) for row in rows]

    def stale_uploads(self, older_than: float) -> list[TaskRow]:
        rows = self.db.execute("SELECT * FROM tasks WHERE state = 'uploading' AND updated_at < ?",
                               (older_than,)).fetchall()
        return [_task(row) for row in rows]

    def delete_task(self, task_id: str) -> None:
        self.db.execute("DELETE FROM chunks WHERE task_id = ?", (task_id,))
        self.db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        self.remove_spool(task_id)

    # ------------------------------------------------------------------ chunks

    def chunk_md5(self, task_id: str, index: int) -> str | None:
        row = self.db.execute("SELECT md5 FROM chunks WHERE task_id = ? AND idx = ?",
                              (task_id, index)).fetchone()
        return row["md5"] if row is not None else None

    def record_chunk(self, task_id: str, index: int, size: int, md5: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO chunks (task_id, idx, size, md5) VALUES (?, ?, ?, ?)",
                        (task_id, index, size, md5))
        self.update(task_id)

    def received_chunks(self, task_id: str) -> list[int]:
        rows = self.db.execute("SELECT idx FROM chunks WHERE task_id = ? ORDER BY idx", (task_id,))
        return [row["idx"] for row in rows]

    def forget_chunks(self, task_id: str) -> None:
        self.db.execute("DELETE FROM chunks WHERE task_id = ?", (task_id,))

    # ------------------------------------------------------------------ results

    def get_result(self, cache_key: str) -> tuple[str, dict[str, Any], float] | None:
        """(task that produced it, result, when) for a cache key."""
        row = self.db.execute("SELECT task_id, result, created_at FROM results WHERE cache_key = ?",
                              (cache_key,)).fetchone()
        if row is None:
            return None
        return row["task_id"], json.loads(row["result"]), row["created_at"]

    def count_pending(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM tasks WHERE state IN ('uploading', 'queued')").fetchone()
        return int(row[0])

    def finish(self, task_id: str, cache_key: str, result: dict[str, Any], duration: float) -> bool:
        """Store the result and mark the task completed, in one transaction (True: one process
        runs each task here, it is always the first to finish it)."""
        now = time.time()
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO results (cache_key, task_id, result, created_at)"
                            " VALUES (?, ?, ?, ?)",
                            (cache_key, task_id, json.dumps(result, ensure_ascii=False), now))
            self.db.execute("UPDATE tasks SET state = 'completed', progress = 100, duration = ?,"
                            " finished_at = ?, updated_at = ?, error = NULL WHERE task_id = ?",
                            (duration, now, now, task_id))
            self.db.execute("DELETE FROM chunks WHERE task_id = ?", (task_id,))
        return True

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row is not None else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _transaction(self) -> Any:
        db = self.db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind: Any, *_: Any) -> None:
                db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()



# ----------------------------------------------------------------------- blocking file work
# (run in a thread by the caller)


def private_dir(path: Path) -> None:
    """Create ``path`` (owner only); tighten one an older version created 0755."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, DIR_MODE)


def write_chunk(path: Path, offset: int, data: bytes) -> None:
    """Write one chunk at its offset and make it durable before it is recorded as received."""
    path.parent.mkdir(mode=DIR_MODE, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write a whole file atomically (temp file, fsync, rename)."""
    path.parent.mkdir(mode=DIR_MODE, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_digests(path: Path) -> tuple[str, str, int]:
    """(MD5, SHA-256, size) of a file, in one pass."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return md5.hexdigest(), sha.hexdigest(), size


def data_digests(data: bytes) -> tuple[str, str]:
    """(MD5, SHA-256) of bytes in memory."""
    return hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()


def _task(row: sqlite3.Row) -> TaskRow:
    values = dict(row)
    values["chunked"] = bool(values["chunked"])
    values["force_refresh"] = bool(values["force_refresh"])
    return TaskRow(**values)

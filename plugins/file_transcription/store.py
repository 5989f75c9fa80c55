"""Durable state: tasks, upload chunks, cached results (SQLite) and spooled uploads (files).

Layout under ``<state_dir>/file_transcription/``::

    tasks.sqlite3            tasks, chunks, results, meta (WAL)
    uploads/<task_id>/data   the upload being received (chunks written at their offsets)
    uploads/<task_id>/audio.<ext>   the complete, verified file waiting for transcription

Every statement is a single-row read or write on a small table, so the store is used straight
from the event loop (WAL + synchronous=NORMAL: a commit is a write to the OS, no fsync; a
killed process loses nothing that was committed). Chunk bytes are written by the caller in a
thread (:meth:`TaskStore.write_chunk`); only their record goes through SQLite.
"""

from __future__ import annotations

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
    file_hash     TEXT NOT NULL,
    cache_key     TEXT NOT NULL,
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
    finished_at   REAL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, queued_at);
CREATE INDEX IF NOT EXISTS tasks_key ON tasks(cache_key, state);
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

    @property
    def extension(self) -> str:
        return self.file_name.rsplit(".", 1)[-1].lower() if "." in self.file_name else "bin"


class TaskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "tasks.sqlite3", isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ tasks

    def create_task(self, *, task_id: str, file_name: str, file_size: int, file_hash: str,
                    cache_key: str, output_format: str, chunked: bool, chunk_size: int,
                    total_chunks: int) -> TaskRow:
        now = time.time()
        self.db.execute(
            "INSERT INTO tasks (task_id, file_name, file_size, file_hash, cache_key, output_format,"
            " chunked, chunk_size, total_chunks, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'uploading', ?, ?)",
            (task_id, file_name, file_size, file_hash, cache_key, output_format, int(chunked),
             chunk_size, total_chunks, now, now))
        task = self.get(task_id)
        assert task is not None
        return task

    def get(self, task_id: str) -> TaskRow | None:
        row = self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task(row) if row is not None else None

    def find_unfinished(self, cache_key: str) -> TaskRow | None:
        """The newest task for the same file and settings that has not finished."""
        row = self.db.execute(
            "SELECT * FROM tasks WHERE cache_key = ? AND state IN ('uploading', 'queued', 'running')"
            " ORDER BY created_at DESC LIMIT 1", (cache_key,)).fetchone()
        return _task(row) if row is not None else None

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

    def finish(self, task_id: str, cache_key: str, result: dict[str, Any], duration: float) -> None:
        """Store the result and mark the task completed, in one transaction."""
        now = time.time()
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO results (cache_key, task_id, result, created_at)"
                            " VALUES (?, ?, ?, ?)",
                            (cache_key, task_id, json.dumps(result, ensure_ascii=False), now))
            self.db.execute("UPDATE tasks SET state = 'completed', progress = 100, duration = ?,"
                            " finished_at = ?, updated_at = ?, error = NULL WHERE task_id = ?",
                            (duration, now, now, task_id))
            self.db.execute("DELETE FROM chunks WHERE task_id = ?", (task_id,))

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

    # ------------------------------------------------------------------ spool (files)

    def spool_dir(self, task_id: str) -> Path:
        return self.uploads / task_id

    def partial_path(self, task_id: str) -> Path:
        return self.spool_dir(task_id) / "data"

    def audio_path(self, task: TaskRow) -> Path:
        return self.spool_dir(task.task_id) / f"audio.{task.extension}"

    def remove_spool(self, task_id: str) -> None:
        shutil.rmtree(self.spool_dir(task_id), ignore_errors=True)


# ----------------------------------------------------------------------- blocking file work
# (run in a thread by the caller)


def write_chunk(path: Path, offset: int, data: bytes) -> None:
    """Write one chunk at its offset and make it durable before it is recorded as received."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write a whole file atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_md5(path: Path) -> tuple[str, int]:
    import hashlib

    digest = hashlib.md5()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _task(row: sqlite3.Row) -> TaskRow:
    values = dict(row)
    values["chunked"] = bool(values["chunked"])
    return TaskRow(**values)

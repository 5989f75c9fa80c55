"""Voiceprint store "json": one JSON file, default ``<state_dir>/speakers.json`` (the seed kept
``data/speakers.json``).

- Every write replaces the whole file atomically: a temp file in the same directory, fsync,
  ``os.replace``, fsync of the directory. A crash (even kill -9) leaves the old or the new
  file, never a torn one.
- The file is mode 0600: voiceprints are biometric data.
- A writer killed mid-write may leave a ``.speakers.json.*.tmp`` file; the next writer removes it.
- Several processes may share the file (the server and ``asrhub speakers enroll``): writers take
  an ``flock`` on ``<file>.lock`` and re-read the file before changing it, and readers reload it
  when its inode, size or mtime changed, so neither loses the other's changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asrhub.engine import EngineError, Voiceprint

if TYPE_CHECKING:
    from asrhub.hub import Hub

FORMAT = "asrhub-voiceprints"
VERSION = 1
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class JsonStoreSettings:
    path: str = ""  # "" → <[server] state_dir>/speakers.json


class VoiceprintFileError(EngineError):
    """The voiceprint file exists but cannot be read as one."""


class JsonVoiceprintStore:
    name = "json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model_name = str(self.path)
        self._lock = threading.Lock()
        self._speakers: dict[str, Voiceprint] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of what we read
        with self._lock:
            self._refresh()

    # ------------------------------------------------------------------ reading

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> None:
        """Reload if another writer replaced the file since we read it. Caller holds the lock."""
        seen = self._stat()
        if seen == self._seen:
            return
        self._speakers = self._read() if seen is not None else {}
        self._seen = seen

    def _read(self) -> dict[str, Voiceprint]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise VoiceprintFileError(f"{self.path}: cannot read voiceprints: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VoiceprintFileError(f"{self.path}: not an asrhub voiceprint file")
        if data.get("version") != VERSION:
            raise VoiceprintFileError(f"{self.path}: voiceprint file version {data.get('version')!r} "
                                      f"is not supported (this asrhub reads version {VERSION})")
        speakers = {}
        try:
            for speaker_id, entry in data["speakers"].items():
                speakers[speaker_id] = Voiceprint(
                    speaker_id=speaker_id,
                    name=str(entry["name"]),
                    embedding=np.asarray(entry["embedding"], dtype=np.float32),
                    created_at=float(entry["created_at"]),
                    audio_seconds=float(entry["audio_seconds"]),
                    engine=str(entry["engine"]),
                    owner=str(entry.get("owner", "")),
                )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise VoiceprintFileError(f"{self.path}: malformed voiceprint entry: {exc!r}") from exc
        return speakers

    # ------------------------------------------------------------------ writing

    def _modify(self, change: Callable[[dict[str, Voiceprint]], bool]) -> bool:
        """Under a thread lock and an flock against other processes: re-read the file, apply
        ``change`` to a copy of the table and, if it says it changed something, save it."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._remove_stale_temp_files()
                self._refresh()
                table = dict(self._speakers)
                if not change(table):
                    return False
                self._write(table)
                self._speakers = table
                self._seen = self._stat()
                return True
            finally:
                os.close(fd)  # releases the flock

    def _remove_stale_temp_files(self) -> None:
        """Temp files of a writer killed mid-write. Caller holds the flock, so no writer is live."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _write(self, table: dict[str, Voiceprint]) -> None:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "speakers": {
                vp.speaker_id: {
                    "name": vp.name,
                    "engine": vp.engine,
                    "dim": int(vp.embedding.shape[0]),
                    "created_at": vp.created_at,
                    "audio_seconds": vp.audio_seconds,
                    "embedding": [float(x) for x in vp.embedding],
                    **({"owner": vp.owner} if vp.owner else {}),
                }
                for vp in table.values()
            },
        }
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------------ VoiceprintStore

    def list(self) -> Sequence[Voiceprint]:
        with self._lock:
            self._refresh()
            return [copy_voiceprint(vp) for vp in sorted(self._speakers.values(), key=lambda v: v.speaker_id)]

    def get(self, speaker_id: str) -> Voiceprint | None:
        with self._lock:
            self._refresh()
            vp = self._speakers.get(speaker_id)
            return copy_voiceprint(vp) if vp is not None else None

    def put(self, voiceprint: Voiceprint) -> None:
        """Insert or overwrite (re-enrolment replaces the old voiceprint), atomically."""
        checked = validated_voiceprint(voiceprint)

        def insert(table: dict[str, Voiceprint]) -> bool:
            table[checked.speaker_id] = checked
            return True

        self._modify(insert)

    def delete(self, speaker_id: str) -> bool:
        return self._modify(lambda table: table.pop(speaker_id, None) is not None)

    def close(self) -> None:
        pass  # every change is on disk when put/delete return


def copy_voiceprint(vp: Voiceprint) -> Voiceprint:
    return Voiceprint(vp.speaker_id, vp.name, vp.embedding.copy(), vp.created_at, vp.audio_seconds,
                      vp.engine, vp.owner)


def validated_voiceprint(vp: Voiceprint) -> Voiceprint:
    """A copy of ``vp`` fit to store (shared by the "json" and "sqlite" stores); ValueError
    saying what is wrong."""
    if not isinstance(vp.speaker_id, str) or not vp.speaker_id or len(vp.speaker_id) > MAX_ID_LENGTH:
        raise ValueError(f"speaker id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    for text in (vp.speaker_id, vp.name, vp.engine, vp.owner):
        try:
            str(text).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("speaker id, name, engine and owner must be valid Unicode text "
                             "(no lone surrogates)") from None
    embedding = np.asarray(vp.embedding, dtype=np.float32)
    if embedding.ndim != 1 or not len(embedding) or not np.all(np.isfinite(embedding)):
        raise ValueError("embedding must be a non-empty 1-D vector of finite numbers")
    for value in (vp.created_at, vp.audio_seconds):
        if not math.isfinite(float(value)):
            raise ValueError("created_at and audio_seconds must be finite")
    return Voiceprint(vp.speaker_id, str(vp.name), embedding.copy(), float(vp.created_at),
                      float(vp.audio_seconds), str(vp.engine), str(vp.owner))


def open_store(settings: JsonStoreSettings, hub: Hub) -> JsonVoiceprintStore:
    path = Path(settings.path).expanduser() if settings.path else hub.state_dir / "speakers.json"
    return JsonVoiceprintStore(path)

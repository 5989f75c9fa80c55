"""Voiceprint store "redis": every instance of a cluster sees the same voiceprints.

One hash per speaker (``<prefix>vp:<id>``: name, owner, engine, created_at, audio_seconds, dim
and the embedding as little-endian float32 bytes; a hash written before ``owner`` was stored
reads as owner "") plus an index set (``<prefix>vp:index``); each change is one MULTI/EXEC
transaction, so a reader never sees half a voiceprint and a change costs one speaker's bytes,
not the whole table. Redis down → :class:`EngineError` saying so
(the protocol reports it as its own error); nothing is cached that could go stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from asrhub.engine import EngineError, Voiceprint

if TYPE_CHECKING:
    from asrhub.cluster import Cluster
    from asrhub.hub import Hub

MAX_ID_BYTES = 512


@dataclass(frozen=True)
class RedisStoreSettings:
    # Keys live under [cluster] key_prefix + this.
    namespace: str = "vp"


class RedisVoiceprintStore:
    name = "redis"

    def __init__(self, cluster: Cluster, settings: RedisStoreSettings) -> None:
        self.cluster = cluster
        self.namespace = settings.namespace
        self.model_name = f"{cluster.config.redis_url.rsplit('@', 1)[-1]} ({cluster.key(self.namespace)})"
        self._index = cluster.key(self.namespace, "index")

    def _key(self, speaker_id: str) -> str:
        return self.cluster.key(self.namespace, speaker_id)

    def _call(self, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise EngineError(f"voiceprint store unavailable: Redis cannot be reached ({exc})") from exc
        except redis.RedisError as exc:
            raise EngineError(f"voiceprint store error: {exc}") from exc

    # ------------------------------------------------------------------ VoiceprintStore

    def list(self) -> Sequence[Voiceprint]:
        client = self.cluster.sync()
        ids = sorted(x.decode("utf-8", "surrogateescape") for x in self._call(client.smembers, self._index))

        def fetch() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for speaker_id in ids:
                pipe.hgetall(self._key(speaker_id))
            return pipe.execute()

        rows = self._call(fetch) if ids else []
        return [vp for speaker_id, row in zip(ids, rows, strict=True)
                if (vp := _decode(speaker_id, row)) is not None]

    def get(self, speaker_id: str) -> Voiceprint | None:
        return _decode(speaker_id, self._call(self.cluster.sync().hgetall, self._key(speaker_id)))

    def put(self, voiceprint: Voiceprint) -> None:
        """Insert or overwrite, atomically."""
        vp = _validated(voiceprint)
        mapping = {"name": vp.name, "owner": vp.owner, "engine": vp.engine,
                   "created_at": repr(vp.created_at), "audio_seconds": repr(vp.audio_seconds),
                   "dim": str(vp.embedding.shape[0]),
                   "embedding": vp.embedding.astype("<f4").tobytes()}

        def write() -> None:
            pipe = self.cluster.sync().pipeline(transaction=True)
            pipe.delete(self._key(vp.speaker_id))
            pipe.hset(self._key(vp.speaker_id), mapping=mapping)
            pipe.sadd(self._index, vp.speaker_id)
            pipe.execute()

        self._call(write)

    def delete(self, speaker_id: str) -> bool:
        def remove() -> bool:
            pipe = self.cluster.sync().pipeline(transaction=True)
            pipe.delete(self._key(speaker_id))
            pipe.srem(self._index, speaker_id)
            deleted, _ = pipe.execute()
            return bool(deleted)

        return bool(self._call(remove))

    def close(self) -> None:
        pass  # the connection pool belongs to the hub's Cluster


def _decode(speaker_id: str, row: dict[bytes, bytes]) -> Voiceprint | None:
    if not row:
        return None
    try:
        embedding = np.frombuffer(row[b"embedding"], dtype="<f4").astype(np.float32)
        if embedding.shape[0] != int(row[b"dim"]):
            raise ValueError("embedding length does not match dim")
        return Voiceprint(speaker_id=speaker_id, name=row[b"name"].decode(),
                          embedding=embedding, created_at=float(row[b"created_at"]),
                          audio_seconds=float(row[b"audio_seconds"]), engine=row[b"engine"].decode(),
                          owner=row.get(b"owner", b"").decode())
    except (KeyError, ValueError) as exc:
        raise EngineError(f"voiceprint {speaker_id!r} in Redis is malformed: {exc}") from exc


def _validated(vp: Voiceprint) -> Voiceprint:
    if not isinstance(vp.speaker_id, str) or not vp.speaker_id \
            or len(vp.speaker_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValueError(f"speaker id must be a non-empty string of at most {MAX_ID_BYTES} bytes")
    embedding = np.asarray(vp.embedding, dtype=np.float32)
    if embedding.ndim != 1 or not len(embedding) or not np.all(np.isfinite(embedding)):
        raise ValueError("embedding must be a non-empty 1-D vector of finite numbers")
    if not (np.isfinite(vp.created_at) and np.isfinite(vp.audio_seconds)):
        raise ValueError("created_at and audio_seconds must be finite")
    return Voiceprint(vp.speaker_id, str(vp.name), embedding, float(vp.created_at),
                      float(vp.audio_seconds), str(vp.engine), str(vp.owner))


def open_store(settings: RedisStoreSettings, hub: Hub) -> RedisVoiceprintStore:
    if hub.cluster is None:
        raise EngineError('[engines] voiceprints = "redis" needs [cluster] redis_url')
    return RedisVoiceprintStore(hub.cluster, settings)

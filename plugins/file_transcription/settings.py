"""``[protocols.file_transcription]`` settings (listener keys such as port are the core's).

The shared listener limits (``max_connections``, ``max_connections_per_peer``,
``max_message_bytes``, ``max_outbox``, ``heartbeat_s``, ``max_body_bytes``) come from
:class:`asrhub.protocol.ListenerSettings`; the seed's own values are redeclared here.
"""

from __future__ import annotations

from dataclasses import dataclass

from asrhub.diarize import DEFAULT_DISTANCE_THRESHOLD
from asrhub.protocol import ListenerSettings

CACHE_SCOPES = ("auto", "token", "peer", "shared", "none")


@dataclass(frozen=True)
class FileTranscriptionSettings(ListenerSettings):
    # The seed: "单消息最大10MB" (bounds upload_data and each upload_chunk) and a 60 s ping.
    max_message_bytes: int = 10 * 1024 * 1024
    heartbeat_s: float = 60.0
    # Largest file accepted (the seed's file_too_large).
    max_file_size_mb: float = 512.0
    # File jobs transcribed at once; live protocols always go first in the executor. In a
    # cluster, 0 = this instance takes uploads and answers clients but transcribes nothing.
    concurrency: int = 1
    # Tasks waiting (queued) or being uploaded at once; beyond that upload_request is refused.
    max_pending_tasks: int = 64
    # Per client (peer address, and token when one is set): uploads/queued tasks at once, and
    # the bytes they declare. One client cannot fill the queue or the disk for everyone.
    max_pending_per_client: int = 8
    client_quota_mb: float = 2048.0
    # Free disk kept beyond every upload in progress (declared sizes are reserved up front).
    min_free_disk_mb: float = 256.0
    # An upload that receives nothing for this long is dropped (chunks deleted): it stops
    # counting against the queue and the client's quota. Also applied at start-up.
    upload_idle_minutes: float = 15.0
    # Who may get a transcript by the seed's MD5 shortcut (upload_request answered with
    # task_complete before any data is sent) and see a task by its id:
    #   "auto"   = "token" when the listener has a token, else "shared";
    #   "token"  = clients holding the same token; "peer" = the same peer address;
    #   "shared" = everyone (no token: anyone who can connect);
    #   "none"   = never: every client sends its file (a known file is still not transcribed
    #              twice: the cache is keyed by the SHA-256 of the bytes received).
    cache_scope: str = "auto"
    # A task waiting in the queue (or running) is told where it stands at least this often:
    # the seed's client gives up after 300 s without a message.
    queue_update_s: float = 30.0
    # Speaker diarization (segments' speaker, the result's speakers). Without a speaker engine
    # the task still completes, with one speaker and a logged warning.
    diarization: bool = True
    # Cosine distance under which two clusters of segments are one speaker (see diarize.py).
    speaker_threshold: float = DEFAULT_DISTANCE_THRESHOLD
    max_speakers: int = 8
    # ASR engine for files ("" = [engines] asr) and language ("" = the engine's setting).
    asr_engine: str = ""
    language: str = ""
    # Longest audio handed to the ASR engine in one executor call (speech regions of one
    # speaker merged up to this; longer regions cut at their quietest point). 20 s keeps each
    # call short and, with the Whisper engine, on its single-window path: as fast as
    # transcribing the whole file (bench/hub_overhead.md).
    piece_seconds: float = 20.0
    # A task whose process died this many times while transcribing it is marked failed.
    max_attempts: int = 3
    # Cluster ([cluster] redis_url set): a directory every instance reads and writes (a shared
    # filesystem: NFS, CephFS, ...; on one host any common directory). Uploads are spooled
    # there, and tasks, progress, results and the hash cache live in Redis, so any instance
    # takes the next task and a client on any instance follows it. "" = file tasks stay per
    # instance (SQLite + spool under state_dir), even with redis_url set.
    shared_spool_dir: str = ""
    # Cluster: a task whose instance has not confirmed it for this long (the instance died) is
    # re-claimed by another one (Redis Streams XAUTOCLAIM) and transcribed again there.
    claim_timeout_s: float = 60.0

    def validate(self) -> None:
        super().validate()
        if not self.max_file_size_mb > 0:
            raise ValueError("max_file_size_mb must be positive")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be >= 65536 (uploads travel in messages)")
        if self.concurrency < 0 or self.max_pending_tasks < 1 or self.max_attempts < 1:
            raise ValueError("concurrency must be >= 0 (0: a cluster instance that transcribes "
                             "nothing), max_pending_tasks and max_attempts >= 1")
        if not 1.0 <= self.claim_timeout_s <= 86400.0:
            raise ValueError("claim_timeout_s must be between 1 and 86400")
        if self.max_pending_per_client < 1 or not self.client_quota_mb > 0:
            raise ValueError("max_pending_per_client must be >= 1 and client_quota_mb positive")
        if not self.min_free_disk_mb >= 0:
            raise ValueError("min_free_disk_mb must be >= 0")
        if not 0 < self.upload_idle_minutes <= 7 * 24 * 60:
            raise ValueError("upload_idle_minutes must be positive (at most a week)")
        if self.cache_scope not in CACHE_SCOPES:
            raise ValueError(f"cache_scope must be one of {', '.join(CACHE_SCOPES)}")
        if not 0.05 <= self.queue_update_s < 300:
            raise ValueError("queue_update_s must be in [0.05, 300) (the seed's client waits 300 s)")
        if not 0.0 < self.speaker_threshold < 2.0:
            raise ValueError("speaker_threshold is a cosine distance in (0, 2)")
        if self.max_speakers < 1:
            raise ValueError("max_speakers must be >= 1")
        if not 1.0 <= self.piece_seconds <= 600.0:
            raise ValueError("piece_seconds must be between 1 and 600")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)

    @property
    def max_payload_bytes(self) -> int:
        """Largest file (single upload) or chunk that fits one message once base64-encoded."""
        return (self.max_message_bytes - 4096) // 4 * 3

    @property
    def client_quota_bytes(self) -> int:
        return int(self.client_quota_mb * 1024 * 1024)

    @property
    def min_free_disk_bytes(self) -> int:
        return int(self.min_free_disk_mb * 1024 * 1024)

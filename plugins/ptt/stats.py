"""Live counters of the PTT listener, for ``GET /stats`` (one object per listener). Connection
and error counts are the protocol kit's (``hub.counter("ptt")``); these are PTT's own."""

from __future__ import annotations

import collections
import time
from typing import Any


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _summary(values: collections.deque[float]) -> dict[str, Any]:
    items = list(values)
    return {"count": len(items),
            "avg": round(sum(items) / len(items), 1) if items else 0.0,
            "p50": round(_percentile(items, 50), 1),
            "p95": round(_percentile(items, 95), 1),
            "p99": round(_percentile(items, 99), 1)}


class PTTStats:
    def __init__(self, window: int = 1000) -> None:
        self.started = time.time()
        self.sessions_opened = 0  # connections accepted (a session was built for them)
        self.utterances_total = 0
        self.utterances_active = 0
        self.audio_seconds = 0.0
        self.final_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.partial_ms: collections.deque[float] = collections.deque(maxlen=window)

    def snapshot(self) -> dict[str, Any]:
        return {
            "utterances": {"active": self.utterances_active, "total": self.utterances_total},
            "audio_seconds": round(self.audio_seconds, 3),
            "processing_ms": {"final": _summary(self.final_ms), "partial": _summary(self.partial_ms)},
        }

"""Measures how late the event loop wakes up: the hub's responsiveness under load."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable


class LoopLagMonitor:
    def __init__(self, interval: float = 0.05, on_sample: Callable[[float], None] | None = None) -> None:
        self.interval = interval
        self.samples: collections.deque[float] = collections.deque(maxlen=4096)
        self._on_sample = on_sample
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - before - self.interval)
            self.samples.append(lag)
            if self._on_sample is not None:
                self._on_sample(lag)

    def percentile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary_ms(self) -> dict[str, float]:
        return {"p50": round(self.percentile(50) * 1000, 2), "p99": round(self.percentile(99) * 1000, 2),
                "max": round(max(self.samples, default=0.0) * 1000, 2), "samples": len(self.samples)}

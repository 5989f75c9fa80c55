"""Prometheus metrics, one registry per hub (so tests can run several hubs in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from asrhub.executor import Priority
    from asrhub.hub import Hub

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class _ExecutorCollector:
    """The executor's capacity and its refusals (the "server busy" errors every protocol
    reports in its own code), read from its stats at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> list:
        return []  # collected at scrape time only (the executor may not exist yet)

    def collect(self):
        stats = self.hub.executor.stats() if self.hub.has_executor else None
        rejected = CounterMetricFamily("asrhub_executor_rejected", "Inference calls refused "
                                       "because the queue stayed full (clients got a busy error)")
        rejected.add_metric([], stats.rejected if stats else 0)
        yield rejected
        workers = GaugeMetricFamily("asrhub_executor_workers", "Inference worker threads")
        workers.add_metric([], stats.workers if stats else 0)
        yield workers
        limit = GaugeMetricFamily("asrhub_executor_max_pending", "Inference calls admitted at once "
                                  "(queued + running) before callers wait")
        limit.add_metric([], stats.max_pending if stats else 0)
        yield limit


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, hub: Hub) -> None:
        self.registry = r = CollectorRegistry()
        self.connections_open = Gauge("asrhub_connections_open", "Open connections", ["protocol"], registry=r)
        self.connections = Counter("asrhub_connections", "Connections accepted", ["protocol"], registry=r)
        self.sessions = Counter("asrhub_sessions", "Connections (sessions) closed, with their summary logged", ["protocol"], registry=r)
        self.audio_seconds = Counter("asrhub_audio_seconds", "Audio received, seconds", ["protocol"], registry=r)
        self.http_requests = Counter("asrhub_http_requests", "HTTP requests answered (WebSocket "
                                     "upgrades included)", ["protocol", "status"], registry=r)
        self.errors = Counter("asrhub_errors", "Error replies sent", ["protocol", "code"], registry=r)
        self.rtf = Histogram("asrhub_session_rtf", "Processing seconds per audio second, per session",
                             ["protocol"], buckets=RTF_BUCKETS, registry=r)
        self.final_latency = Histogram("asrhub_final_latency_seconds",
                                       "End of speech (or stop) to final result", ["protocol"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("asrhub_inference_seconds", "Inference call run time", ["engine"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.inference_wait = Histogram("asrhub_inference_wait_seconds", "Time queued before running",
                                        ["priority"], buckets=LATENCY_BUCKETS, registry=r)
        self.loop_lag = Histogram("asrhub_event_loop_lag_seconds", "Event loop scheduling lag",
                                  buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0), registry=r)
        queue = Gauge("asrhub_executor_queue_depth", "Inference calls waiting", registry=r)
        busy = Gauge("asrhub_executor_busy_workers", "Inference workers busy", registry=r)
        queue.set_function(lambda: hub.executor.stats().queue_depth if hub.has_executor else 0)
        busy.set_function(lambda: hub.executor.stats().busy_workers if hub.has_executor else 0)
        r.register(_ExecutorCollector(hub))
        up = Gauge("asrhub_ready", "1 once models are loaded and listeners are up", registry=r)
        up.set_function(lambda: 1.0 if hub.ready else 0.0)

    def observe_inference(self, engine: str | None, priority: Priority, wait_s: float, run_s: float,
                          failed: bool) -> None:
        self.inference.labels(engine=engine or "other").observe(run_s)
        self.inference_wait.labels(priority=priority.name.lower()).observe(wait_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)

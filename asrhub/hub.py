"""The hub: shared state of one asrhub process.

It turns the plugins' ``asrhub_register_*`` specs into lookup tables once, validates each
plugin's config section, and loads each engine at most once (shared by every protocol).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pluggy
import structlog

from asrhub.cluster import Cluster
from asrhub.config import (
    Config,
    ConfigError,
    EnginesConfig,
    ListenerConfig,
    build_settings,
    listener_config,
)
from asrhub.engine import ASREngine, Denoiser, SpeakerEngine, VADEngine, VoiceprintStore
from asrhub.executor import InferenceExecutor, Priority
from asrhub.loopmon import LoopLagMonitor
from asrhub.metrics import Metrics
from asrhub.specs import EngineSpec, ProtocolSpec

log = structlog.get_logger("asrhub.hub")

EngineKind = Literal["asr", "vad", "speaker", "denoise", "voiceprints"]
ENGINE_HOOKS: dict[EngineKind, str] = {
    "asr": "asrhub_register_asr_engines",
    "vad": "asrhub_register_vad_engines",
    "speaker": "asrhub_register_speaker_engines",
    "denoise": "asrhub_register_denoisers",
    "voiceprints": "asrhub_register_voiceprint_stores",
}


class UnknownEngine(ConfigError):
    pass


@dataclass
class Listener:
    """A protocol listener (or a protocol's extra listener, e.g. a static site)."""

    spec: ProtocolSpec
    config: ListenerConfig
    settings: Any
    extra: str | None = None  # name of the extra port, None for the protocol's main listener

    @property
    def label(self) -> str:
        return self.spec.name if self.extra is None else f"{self.spec.name}.{self.extra}"


@dataclass
class ProtocolCounters:
    connections_total: int = 0
    connections_open: int = 0
    sessions_total: int = 0
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


class Hub:
    def __init__(self, config: Config, pm: pluggy.PluginManager) -> None:
        self.config = config
        self.pm = pm
        self.started_at = time.time()
        self.protocols = self._collect_protocols()
        self.engine_specs: dict[EngineKind, dict[str, EngineSpec]] = {
            kind: self._collect_engines(kind) for kind in ENGINE_HOOKS
        }
        self.engine_settings: dict[tuple[EngineKind, str], Any] = {}
        self._validate_engine_sections()
        self.listeners = self._build_listeners()
        self._engines: dict[tuple[EngineKind, str], Any] = {}
        self._engine_locks: dict[tuple[EngineKind, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._executor: InferenceExecutor | None = None
        self.counters: dict[str, ProtocolCounters] = {name: ProtocolCounters() for name in self.protocols}
        self.loading = False
        self.ready = False
        # Built with the hub, never patched on later: every plugin may rely on them.
        self.metrics = Metrics(self)
        self.loop_lag = LoopLagMonitor(on_sample=self.metrics.loop_lag.observe)
        self.bound_ports: dict[str, int] = {}  # listener label -> port actually bound
        self.extra_health: dict[str, Callable[[], tuple[bool, str]]] = {}
        # Shared state with other instances (Redis), or None on a single box.
        self.cluster: Cluster | None = Cluster(config.cluster) if config.cluster.redis_url else None

    # ------------------------------------------------------------------ registry

    def _collect_protocols(self) -> dict[str, ProtocolSpec]:
        table: dict[str, ProtocolSpec] = {}
        for specs in self.pm.hook.asrhub_register_protocols():
            for spec in specs or ():
                if spec.name in table:
                    raise ConfigError(f"protocol {spec.name!r} is registered by two plugins")
                table[spec.name] = spec
        return table

    def _collect_engines(self, kind: EngineKind) -> dict[str, EngineSpec]:
        table: dict[str, EngineSpec] = {}
        for specs in getattr(self.pm.hook, ENGINE_HOOKS[kind])():
            for spec in specs or ():
                if spec.name in table:
                    raise ConfigError(f"{kind} engine {spec.name!r} is registered by two plugins")
                table[spec.name] = spec
        return table

    def _validate_engine_sections(self) -> None:
        source = self.config.source
        for name, section in self.config.engine_sections.items():
            kinds = [kind for kind, specs in self.engine_specs.items() if name in specs]
            if not kinds:
                known = sorted({n for specs in self.engine_specs.values() for n in specs})
                raise ConfigError(f"{source}: [engines.{name}] names no installed engine "
                                  f"(installed: {', '.join(known)})")
            for kind in kinds:
                spec = self.engine_specs[kind][name]
                self.engine_settings[(kind, name)] = build_settings(
                    spec.settings_class, section, f"{source}: [engines.{name}]")
        defaults = EnginesConfig()
        for kind in ENGINE_HOOKS:
            wanted = getattr(self.config.engines, kind)
            # A default engine whose plugin is not installed only fails when it is used.
            explicit = wanted != getattr(defaults, kind)
            if wanted != "none" and wanted not in self.engine_specs[kind] and explicit:
                raise UnknownEngine(
                    f"{source}: [engines] {kind} = {wanted!r}: no such {kind} engine "
                    f"(installed: {', '.join(sorted(self.engine_specs[kind])) or 'none'})")

    def _build_listeners(self) -> list[Listener]:
        listeners = []
        for name in self.config.protocol_sections:
            if name not in self.protocols:
                raise ConfigError(f"{self.config.source}: [protocols.{name}] names no installed "
                                  f"protocol (installed: {', '.join(sorted(self.protocols))})")
        for name, spec in self.protocols.items():
            raw = dict(self.config.protocol_sections.get(name, {}))
            extra_raw = {k: raw.pop(k) for k in list(raw) if k in spec.extra_ports}
            lc, own = listener_config(self.config, name, spec.default_port, raw,
                                      enabled_by_default=spec.enabled_by_default)
            settings: Any = build_settings(spec.settings_class, own,
                                      f"{self.config.source}: [protocols.{name}]")
            if spec.check is not None and lc.enabled:
                try:
                    spec.check(settings, self)
                except ValueError as exc:
                    raise ConfigError(f"{self.config.source}: [protocols.{name}] {exc}") from None
            listeners.append(Listener(spec, lc, settings))
            for extra, default_port in spec.extra_ports.items():
                section = extra_raw.get(extra, {})
                if not isinstance(section, dict):
                    raise ConfigError(f"{self.config.source}: [protocols.{name}.{extra}] must be a table")
                section = {"enabled": lc.enabled, **section}
                elc, leftover = listener_config(self.config, f"{name}.{extra}", default_port, section)
                if leftover:
                    raise ConfigError(f"{self.config.source}: [protocols.{name}.{extra}]: unknown "
                                      f"key {sorted(leftover)[0]!r}")
                listeners.append(Listener(spec, elc, settings, extra=extra))
        return listeners

    def enabled_listeners(self) -> list[Listener]:
        return [lst for lst in self.listeners if lst.config.enabled]

    def listener(self, protocol: str, extra: str | None = None) -> Listener:
        for lst in self.listeners:
            if lst.spec.name == protocol and lst.extra == extra:
                return lst
        raise KeyError(protocol)

    # ------------------------------------------------------------------ engines

    @property
    def state_dir(self) -> Path:
        path = self.config.state_dir
        path.mkdir(parents=True, exist_ok=True)
        return path

    def engine_name(self, kind: EngineKind, name: str | None = None) -> str:
        return name or getattr(self.config.engines, kind)

    def settings_for(self, kind: EngineKind, name: str) -> Any:
        key = (kind, name)
        if key not in self.engine_settings:
            spec = self.engine_specs[kind][name]
            self.engine_settings[key] = build_settings(spec.settings_class, {}, f"[engines.{name}]")
        return self.engine_settings[key]

    def engine_sync(self, kind: EngineKind, name: str | None = None) -> Any:
        """The shared engine, loaded on first use. Blocking: call it from a worker thread (or the
        CLI); coroutines use :meth:`engine`."""
        name = self.engine_name(kind, name)
        if name == "none":
            return None
        key = (kind, name)
        if key in self._engines:
            return self._engines[key]
        specs = self.engine_specs[kind]
        if name not in specs:
            raise UnknownEngine(f"no {kind} engine named {name!r} "
                                f"(installed: {', '.join(sorted(specs)) or 'none'})")
        with self._locks_guard:
            lock = self._engine_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._engines:
                started = time.perf_counter()
                engine = specs[name].factory(self.settings_for(kind, name), self)
                self._engines[key] = engine
                log.info("engine_loaded", kind=kind, engine=name,
                         model=getattr(engine, "model_name", None),
                         load_s=round(time.perf_counter() - started, 3))
        return self._engines[key]

    async def engine(self, kind: EngineKind, name: str | None = None) -> Any:
        key = (kind, self.engine_name(kind, name))
        if key in self._engines:
            return self._engines[key]
        return await self.executor.run(self.engine_sync, kind, name, priority=Priority.LIVE,
                                       timeout=3600)

    def loaded_engine(self, kind: EngineKind, name: str | None = None) -> Any | None:
        return self._engines.get((kind, self.engine_name(kind, name)))

    async def asr(self, name: str | None = None) -> ASREngine:
        return await self.engine("asr", name)

    async def vad(self, name: str | None = None) -> VADEngine:
        return await self.engine("vad", name)

    async def speaker(self, name: str | None = None) -> SpeakerEngine:
        return await self.engine("speaker", name)

    async def denoiser(self, name: str | None = None) -> Denoiser | None:
        return await self.engine("denoise", name)

    async def voiceprints(self, name: str | None = None) -> VoiceprintStore:
        return await self.engine("voiceprints", name)

    def loaded_engines(self) -> dict[str, str]:
        return {f"{kind}:{name}": str(getattr(engine, "model_name", name))
                for (kind, name), engine in self._engines.items()}

    def unload_engines(self) -> None:
        for (kind, name), engine in list(self._engines.items()):
            try:
                close = getattr(engine, "close", None)
                if close is not None:
                    close()
            except Exception:  # noqa: BLE001 - shutting down; report and go on
                log.exception("engine_close_failed", kind=kind, engine=name)
        self._engines.clear()

    # ------------------------------------------------------------------ run

    @property
    def executor(self) -> InferenceExecutor:
        """The inference executor, started once by :meth:`make_executor` (the server and the
        CLI do); asking before is a programming error, said plainly."""
        if self._executor is None:
            raise RuntimeError("the hub's executor is not started (Server.start or make_executor)")
        return self._executor

    @property
    def has_executor(self) -> bool:
        return self._executor is not None

    def make_executor(self) -> InferenceExecutor:
        if self._executor is not None:
            return self._executor
        cfg = self.config.executor
        self._executor = InferenceExecutor(cfg.workers, cfg.max_pending, cfg.busy_timeout,
                                           dict(cfg.engine_concurrency),
                                           on_done=self.metrics.observe_inference,
                                           worker_nice=cfg.worker_nice,
                                           batch_workers=cfg.batch_workers)
        return self._executor

    def counter(self, protocol: str) -> ProtocolCounters:
        return self.counters.setdefault(protocol, ProtocolCounters())

    def service_info(self) -> dict[str, Any]:
        """What this hub serves where: the demo page and clients find protocols through it."""
        from asrhub import __version__

        asr = self.loaded_engine("asr")
        return {
            "name": "asrhub",
            "version": __version__,
            "protocols": [
                {"name": lst.label, "port": self.bound_ports.get(lst.label, lst.config.port),
                 "description": lst.spec.description, "tls": bool(lst.config.tls_cert),
                 "transport": lst.spec.transport}
                for lst in self.enabled_listeners()
            ],
            "engine": self.engine_name("asr"),
            "model": getattr(asr, "model_name", None),
            "engines": self.loaded_engines(),
        }

    async def preload(self) -> None:
        """Load the engines the enabled protocols will need before reporting ready."""
        self.loading = True
        try:
            wanted: list[EngineKind] = ["asr", "vad"]
            for lst in self.enabled_listeners():
                if lst.extra is None and lst.spec.preload is not None:
                    wanted += [k for k in lst.spec.preload(lst.settings) if k not in wanted]  # type: ignore[misc]
            for kind in wanted:
                if kind not in ENGINE_HOOKS:
                    raise ConfigError(f"a protocol asked to preload unknown engine kind {kind!r}")
                await self.engine(kind)
        finally:
            self.loading = False

    def session_closed(self, summary: dict[str, Any]) -> None:
        counters = self.counter(summary.get("protocol", "?"))
        counters.sessions_total += 1
        counters.audio_seconds += float(summary.get("audio_s") or 0.0)
        counters.processing_seconds += float(summary.get("processing_s") or 0.0)
        self.metrics.sessions.labels(protocol=summary.get("protocol", "?")).inc()
        log.info("session_closed", **summary)
        try:
            self.pm.hook.asrhub_session_closed(hub=self, summary=summary)
        except Exception:  # noqa: BLE001
            log.exception("session_closed_hook_failed")

    def count_error(self, protocol: str, code: str | int) -> None:
        counters = self.counter(protocol)
        counters.errors[str(code)] = counters.errors.get(str(code), 0) + 1
        self.metrics.errors.labels(protocol=protocol, code=str(code)).inc()

    def health(self) -> tuple[bool, str]:
        if self.loading or not self.ready:
            return False, "loading models"
        if self._executor is not None and self._executor.saturated:
            return False, "inference queue full"
        for name, check in self.extra_health.items():
            ok, why = check()
            if not ok:
                return False, f"{name}: {why}"
        return True, "ok"

    def uptime(self) -> float:
        return time.time() - self.started_at

    # convenience for sync callers (CLI, tests)
    def run_coro(self, coro: Any) -> Any:
        return asyncio.run(coro)

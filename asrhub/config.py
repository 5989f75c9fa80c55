"""One TOML file, parsed once into frozen dataclasses.

The core validates ``[server]``, ``[executor]`` and ``[engines]``; each plugin's section
(``[engines.<name>]``, ``[protocols.<name>]``) is validated by :func:`build_settings` against
the settings class the plugin declares. An unknown key or a bad value is a :class:`ConfigError`
naming it. A string value ``"env:NAME"`` is read from the environment (for secrets).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LISTENER_KEYS = ("enabled", "host", "port", "token", "tls_cert", "tls_key", "allowed_origins")


class ConfigError(ValueError):
    """A configuration problem; the message names the file, section and key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    state_dir: str = ""  # "" → $STATE_DIRECTORY (systemd) or ~/.local/state/asrhub
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    drain_timeout: float = 10.0
    preload: bool = True
    # Default for every listener; a listener's own token wins. A string, or a list of tokens
    # (one per client or team): a client presents any one of them, and what it creates (a
    # voiceprint) belongs to that token's scope.
    token: str | list[str] = ""
    # Accepted wherever a listener token is, and may replace or remove any client's voiceprint.
    admin_token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    allowed_origins: list[str] = field(default_factory=list)
    # How long a worker thread may hold the GIL before the event loop gets a turn (Python's
    # default is 5 ms; inference threads running Python code then delay the loop by that much).
    gil_switch_interval_ms: float = 1.0
    # An HTTP connection must complete its request headers (and an idle keep-alive connection
    # its next request) within this many seconds, or it is closed (slow-header clients).
    header_timeout_s: float = 15.0


@dataclass(frozen=True)
class ExecutorConfig:
    # Threads that run blocking engine calls. Most of them wait, not compute: concurrent
    # Whisper decodes meet in the engine's batcher (one batch at a time, finals first), so a
    # batch can only hold as many sessions as there are workers waiting in it. Measured on 2
    # cores (bench/results/concurrency.md): 16 tiny.en streams, stop -> final p95 0.65 s with
    # 8 or 16 workers, 1.13 s with 2.
    workers: int = 16
    max_pending: int = 64
    busy_timeout: float = 30.0
    # File jobs (uploads, the OpenAI API, batch mode) running at once, so that live streams always
    # find workers and their finals do not queue behind a burst of uploads' decode windows
    # (0 = as many as workers). On 2 cores two file decodes already use the whole CPU.
    batch_workers: int = 2
    # Per-engine limit of calls running at once (0 = as many as workers).
    engine_concurrency: dict[str, int] = field(default_factory=dict)
    # Scheduling priority of inference threads relative to the event loop (Linux nice, 0-19).
    worker_nice: int = 5


@dataclass(frozen=True)
class EnginesConfig:
    asr: str = "whisper"
    vad: str = "silero"
    speaker: str = "resemblyzer"
    denoise: str = "none"
    voiceprints: str = "sqlite"


@dataclass(frozen=True)
class ClusterConfig:
    """Several asrhub instances sharing state through Redis (off when ``redis_url`` is "")."""

    # e.g. "redis://127.0.0.1:6379/0"; "env:ASRHUB_REDIS_URL" to keep a password out of the file
    redis_url: str = ""
    # Names this instance in shared state (task claims, logs); "" = hostname:pid.
    instance_id: str = ""
    # Every key and channel asrhub uses starts with this (several hubs on one Redis).
    key_prefix: str = "asrhub:"
    # Seconds between reachability checks (reported by /health).
    health_interval_s: float = 2.0


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    enabled: bool
    host: str
    port: int
    token: tuple[str, ...] = ()  # the tokens a client may present (any one); () = no token asked
    tls_cert: str = ""
    tls_key: str = ""
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    executor: ExecutorConfig
    engines: EnginesConfig
    engine_sections: dict[str, dict[str, Any]]
    protocol_sections: dict[str, dict[str, Any]]
    source: str = "(built-in defaults)"
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def state_dir(self) -> Path:
        if self.server.state_dir:
            return Path(self.server.state_dir).expanduser()
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "asrhub"


def default_search_path() -> list[Path]:
    paths = []
    if os.environ.get("ASRHUB_CONFIG"):
        paths.append(Path(os.environ["ASRHUB_CONFIG"]))
    if os.environ.get("CONFIGURATION_DIRECTORY"):
        paths.append(Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "asrhub.toml")
    paths.append(Path("asrhub.toml"))
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    paths.append(Path(xdg) / "asrhub" / "asrhub.toml")
    paths.append(Path("/etc/asrhub/asrhub.toml"))
    return paths


def load_config(path: str | Path | None = None, *, search: bool = True) -> Config:
    """Read ``path`` (or the first file on the search path, or nothing) and validate the core."""
    if path is None and search:
        path = next((p for p in default_search_path() if p.is_file()), None)
    if path is None:
        return parse_config({})
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], *, source: str = "(built-in defaults)") -> Config:
    known = {"server", "executor", "engines", "protocols", "cluster"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown section [{key}] (known: {', '.join(sorted(known))})")
    engines_raw = dict(_table(data, "engines", source))
    engine_sections = {k: engines_raw.pop(k) for k in list(engines_raw) if isinstance(engines_raw[k], dict)}
    protocols = _table(data, "protocols", source)
    for name, section in protocols.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: [protocols] {name} must be a table [protocols.{name}]")
    executor = build_settings(ExecutorConfig, _table(data, "executor", source), f"{source}: [executor]")
    if executor.workers < 1 or executor.max_pending < 1:
        raise ConfigError(f"{source}: [executor] workers and max_pending must be >= 1")
    if executor.batch_workers < 0:
        raise ConfigError(f"{source}: [executor] batch_workers must be >= 0 (0 = no limit)")
    return Config(
        server=build_settings(ServerConfig, _table(data, "server", source), f"{source}: [server]"),
        executor=executor,
        engines=build_settings(EnginesConfig, engines_raw, f"{source}: [engines]"),
        engine_sections=engine_sections,
        protocol_sections=dict(protocols),
        source=source,
        cluster=build_settings(ClusterConfig, _table(data, "cluster", source), f"{source}: [cluster]"),
    )


def listener_config(config: Config, name: str, default_port: int, raw: dict[str, Any], *,
                    enabled_by_default: bool = True) -> tuple[ListenerConfig, dict[str, Any]]:
    """Split a protocol section into the core's listener keys and the plugin's own keys."""
    where = f"{config.source}: [protocols.{name}]"
    own = {k: v for k, v in raw.items() if k not in LISTENER_KEYS}
    server = config.server
    values = {
        "enabled": raw.get("enabled", enabled_by_default),
        "host": raw.get("host", server.host),
        "port": raw.get("port", default_port),
        "token": raw.get("token", server.token),
        "tls_cert": raw.get("tls_cert", server.tls_cert),
        "tls_key": raw.get("tls_key", server.tls_key),
        "allowed_origins": raw.get("allowed_origins", list(server.allowed_origins)),
    }
    hints = {"enabled": bool, "host": str, "port": int, "token": str | list[str], "tls_cert": str,
             "tls_key": str, "allowed_origins": list[str]}
    checked = {k: _check(v, hints[k], f"{where} {k}") for k, v in values.items()}
    if not 0 <= checked["port"] <= 65535:
        raise ConfigError(f"{where} port: {checked['port']} is not a TCP port")
    if bool(checked["tls_cert"]) != bool(checked["tls_key"]):
        raise ConfigError(f"{where}: tls_cert and tls_key go together")
    checked["allowed_origins"] = tuple(checked["allowed_origins"])
    checked["token"] = _tokens(checked["token"], f"{where} token")
    return ListenerConfig(name=name, **checked), own


def _tokens(value: str | list[str], where: str) -> tuple[str, ...]:
    """A token or a list of them, as a tuple without repeats ("" alone = no token)."""
    if isinstance(value, str):
        return (value,) if value else ()
    for i, token in enumerate(value):
        if not token:
            raise ConfigError(f"{where}[{i}]: an empty token would let any client in")
    return tuple(dict.fromkeys(value))


T = typing.TypeVar("T")


def build_settings(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and bad types are errors."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
    values = {key: _check(value, hints[key], f"{where} {key}") for key, value in data.items()}
    try:
        settings = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    validate = getattr(settings, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return settings


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return value


def _check(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise ConfigError naming ``where``."""
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise ConfigError(f"{where}: environment variable {var} is not set")
        value = os.environ[var]
        if hint is int or hint is float:
            try:
                value = hint(value)
            except ValueError:
                raise ConfigError(f"{where}: ${var}={value!r} is not a {hint.__name__}") from None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None) and value is None:
                return None
            try:
                return _check(value, arg, where)
            except ConfigError as exc:
                if isinstance(value, list) and typing.get_origin(arg) in (list, tuple):
                    raise  # a list where a list may go: say what is wrong inside it
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} has the wrong type")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return [_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _check(v, inner, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return build_settings(hint, value, where)
    return value

"""Speaker embeddings and the voiceprint store.

- ``[engines] speaker = "resemblyzer"`` (default; ships its weights). FunASR's CAM++/ERes2Net
  engine ``"campplus"`` is registered by the funasr plugin (it is a FunASR model).
- ``[engines] voiceprints = "sqlite"`` (default): ``[engines.sqlite] path`` (default
  ``<state_dir>/voiceprints.sqlite3``); imports the "json" store's file once when it creates
  the database.
- ``[engines] voiceprints = "json"``: ``[engines.json] path`` (default
  ``<state_dir>/speakers.json``).
- Protocols match embeddings with :mod:`asrhub.speakers` (the core; `matching` re-exports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asrhub.hookspecs import hookimpl
from asrhub.specs import EngineSpec
from asrhub_plugins.speakers.resemblyzer_engine import ResemblyzerSettings
from asrhub_plugins.speakers.sqlite_store import SqliteStoreSettings
from asrhub_plugins.speakers.store import JsonStoreSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub


def _resemblyzer(settings: ResemblyzerSettings, hub: Hub) -> Any:
    from asrhub_plugins.speakers.resemblyzer_engine import ResemblyzerEngine

    return ResemblyzerEngine(settings)


def _json_store(settings: JsonStoreSettings, hub: Hub) -> Any:
    from asrhub_plugins.speakers.store import open_store

    return open_store(settings, hub)


def _sqlite_store(settings: SqliteStoreSettings, hub: Hub) -> Any:
    from asrhub_plugins.speakers.sqlite_store import open_store

    return open_store(settings, hub)


@hookimpl
def asrhub_register_speaker_engines() -> list[EngineSpec]:
    return [
        EngineSpec("resemblyzer", "Resemblyzer GE2E voice encoder, 256-dim (weights ship with it)",
                   _resemblyzer, ResemblyzerSettings),
    ]


@hookimpl
def asrhub_register_voiceprint_stores() -> list[EngineSpec]:
    return [EngineSpec("sqlite", "voiceprints in SQLite, one row each (WAL, mode 0600)",
                       _sqlite_store, SqliteStoreSettings),
            EngineSpec("json", "voiceprints in one JSON file (atomic writes, mode 0600)",
                       _json_store, JsonStoreSettings)]

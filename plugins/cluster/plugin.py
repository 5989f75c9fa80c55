"""asrhub plugin "cluster": state shared by several instances through Redis.

``[engines] voiceprints = "redis"`` (with ``[cluster] redis_url``): a speaker enrolled through
one instance is recognised by all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asrhub.hookspecs import hookimpl
from asrhub.specs import EngineSpec

from .voiceprints import RedisStoreSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub


def _redis_store(settings: RedisStoreSettings, hub: Hub) -> Any:
    from .voiceprints import open_store

    return open_store(settings, hub)


@hookimpl
def asrhub_register_voiceprint_stores() -> list[EngineSpec]:
    return [EngineSpec("redis", "voiceprints in Redis, shared by every instance of a cluster "
                                "(needs [cluster] redis_url)", _redis_store, RedisStoreSettings)]

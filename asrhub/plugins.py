"""Plugin manager factory: built-ins and third-party plugins load the same way."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import pluggy

from asrhub import hookspecs


def make_plugin_manager(
    extra_plugins: Iterable[ModuleType | object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """Build a plugin manager: hookspecs, entry-point group ``asrhub``, then ``extra_plugins``.

    ``check_pending()`` makes a misspelt ``asrhub_*`` hook fail loudly.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def plugin_names(pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """(name, distribution) for every registered plugin, for ``asrhub plugins``."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        dist = dists.get(id(plugin))
        where = f"{dist.project_name} {dist.version}" if dist is not None else "(registered directly)"
        rows.append((name, where))
    return sorted(rows)

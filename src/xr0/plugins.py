"""Plugin discovery through the `xr0.plugins` entry-point group, and nothing else.

Importing a plugin's module registers its parts. Plugins load once, at the entry points: the `xr0` CLI, `xr0.run.fit`
and `xr0.checkpoint.load_policy` (a Python user of other APIs calls `load_plugins()` first). A plugin that fails to import is an error that names
its distribution; XR0_PLUGIN_ERRORS=warn downgrades that to a warning (e.g. to run with a broken robot SDK).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points

from xr0 import registry

GROUP = "xr0.plugins"


class PluginError(RuntimeError):
    pass


@dataclass
class LoadedPlugin:
    name: str
    distribution: str
    module: str
    version: str
    error: str | None = None


_loaded: list[LoadedPlugin] | None = None


def load_plugins() -> list[LoadedPlugin]:
    """Import every plugin once (idempotent). Returns what was found, with any import error."""
    global _loaded
    if _loaded is not None:
        return _loaded
    _loaded = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        info = LoadedPlugin(ep.name, dist, ep.value, version)
        try:
            with registry.registering_for(dist):
                ep.load()
        except Exception as exc:  # a broken plugin must name itself, whatever it raised
            info.error = f"{type(exc).__name__}: {exc}"
            msg = (
                f"xr0 plugin '{ep.name}' from distribution '{dist}' failed to import ({info.error}). "
                f"Fix or uninstall it (pip uninstall {dist}), or set XR0_PLUGIN_ERRORS=warn to skip it."
            )
            if os.environ.get("XR0_PLUGIN_ERRORS", "error").lower() == "warn":
                warnings.warn(msg, stacklevel=2)
            else:
                _loaded.append(info)
                raise PluginError(msg) from exc
        _loaded.append(info)
    registry.plugins_loaded()
    return _loaded


def reset_for_tests() -> None:
    """Forget what was loaded so a test can load again (entries already registered stay)."""
    global _loaded
    _loaded = None

"""One Registry class; every swappable part of xr0 is looked up by name in one of these.

A recipe names components (`mask: {name: lambda, window: 4}`); the registry turns the name into the
builder and records where each entry came from (xr0 itself or a plugin's distribution).
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# The distribution whose plugin module is being imported (`registering_for`); entries defined elsewhere find their
# distribution from their module's top-level package (so a plugin imported directly, e.g. by its tests, still says
# its name).
_current_origin: list[str] = ["xr0"]
_package_dists: dict[str, list[str]] | None = None
_plugins_loaded = False


@contextlib.contextmanager
def registering_for(distribution: str) -> Iterator[None]:
    """Entries registered inside this block come from `distribution` (xr0.plugins wraps each plugin's import)."""
    _current_origin.append(distribution)
    try:
        yield
    finally:
        _current_origin.pop()


def plugins_loaded() -> None:
    """Recorded by xr0.plugins.load_plugins, so an unknown name can say whether plugins were looked at."""
    global _plugins_loaded
    _plugins_loaded = True


def _origin_of(obj: Any) -> str:
    global _package_dists
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    if top == "xr0":
        return "xr0"
    if top in ("", "__main__") or top.startswith("test"):
        return _current_origin[-1]
    if _package_dists is None:
        from importlib.metadata import packages_distributions

        _package_dists = packages_distributions()
    dists = _package_dists.get(top)
    return dists[0] if dists else _current_origin[-1]


class RegistryError(KeyError):
    """Unknown or duplicate registry name. The message is the whole explanation."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    origin: str  # "xr0" or the plugin distribution that registered it

    @property
    def doc(self) -> str:
        """First line of the builder's docstring, for `xr0 ls`."""
        text = inspect.getdoc(self.obj) or ""
        return text.strip().splitlines()[0] if text.strip() else ""


class Registry:
    """Name → builder (a class or a function). `builtin` is the xr0 module whose import fills it."""

    def __init__(self, kind: str, builtin: str | None = None):
        self.kind = kind
        self._builtin = builtin
        self._entries: dict[str, Entry] = {}
        self._builtins_loaded = builtin is None

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                old = self._entries[name]
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered (by {old.origin}: "
                    f"{getattr(old.obj, '__module__', '?')}.{getattr(old.obj, '__qualname__', old.obj)}); "
                    f"pick another name"
                )
            self._entries[name] = Entry(name, obj, _origin_of(obj))
            return obj

        return deco

    def _ensure_loaded(self) -> None:
        """The built-in entries (importing the kind's xr0 package registers them). Plugins are loaded once by the
        entry points (the CLI, `xr0.run.fit`, `xr0.checkpoint.load_policy`), never from here."""
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module(self._builtin)

    def entry(self, name: str) -> Entry:
        self._ensure_loaded()
        if name not in self._entries:
            raise RegistryError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: Any) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listed = ", ".join(names) if names else "(none registered)"
        unloaded = "" if _plugins_loaded else " (plugins are not loaded: from Python, call xr0.plugins.load_plugins())"
        return f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {listed}{unloaded}"

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).obj

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._ensure_loaded()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


BACKBONES = Registry("backbone", "xr0.backbones")
HEADS = Registry("head", "xr0.heads")
MASKS = Registry("mask", "xr0.masks")
SAMPLERS = Registry("sampler", "xr0.samplers")
EMBODIMENTS = Registry("embodiment", "xr0.embodiments")
STAGES = Registry("stage", "xr0.stages")
DATASETS = Registry("dataset", "xr0.data")
COMMANDS = Registry("command", "xr0.commands")
ROBOTS = Registry("robot")  # robot drivers (the xr0_deploy.protocol.Robot protocol), from plugins; none built in

ALL = {r.kind: r for r in (BACKBONES, HEADS, MASKS, SAMPLERS, EMBODIMENTS, STAGES, DATASETS, COMMANDS, ROBOTS)}

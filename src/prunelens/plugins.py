"""The plugin manager: built-ins, installed entry points and user-named files.

Environment:
  PRUNELENS_LOAD_PLUGINS  unset: autoload every installed ``prunelens`` entry point;
                          empty string: autoload none; ``a,b``: only those distributions
                          (or entry-point names). Built-ins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PrunelensError

ENTRY_POINT_GROUP = "prunelens"
ENV_ALLOWLIST = "PRUNELENS_LOAD_PLUGINS"
BUILTIN_MODULES = (
    "prunelens_plugins.architectures",
    "prunelens_plugins.magnitude",
    "prunelens_plugins.wanda",
    "prunelens_plugins.sparsegpt",
    "prunelens_plugins.drop",
    "prunelens_plugins.rtn",
    "prunelens_plugins.gptq",
    "prunelens_plugins.rankers",
    "prunelens_plugins.allocators",
    "prunelens_plugins.tasks",
)

pm = pluggy.PluginManager("prunelens")
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    """What ``prunelens plugins`` shows about one plugin."""

    name: str
    version: str | None
    source: str  # "builtin" | "entry-point" | "file"
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    architectures: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    rankers: list[str] = field(default_factory=list)
    error: str | None = None


_sources: dict[str, tuple[str, str | None]] = {}
_failed: list[PluginInfo] = []
_loaded = False


def _register(module: Any, name: str, source: str, version: str | None) -> None:
    if pm.get_plugin(name) is not None or pm.is_registered(module):
        return
    pm.register(module, name=name)
    _sources[name] = (source, version)


def _allowlist() -> set[str] | None:
    value = os.environ.get(ENV_ALLOWLIST)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def load_plugins() -> None:
    """Register built-ins and allowed entry points once; idempotent."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for modname in BUILTIN_MODULES:
        _register(importlib.import_module(modname), modname.rsplit(".", 1)[-1], "builtin", None)
    allow = _allowlist()
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ep.name
        if allow is not None and ep.name not in allow and dist not in allow:
            continue
        version = ep.dist.version if ep.dist else None
        try:
            module = ep.load()
            _register(module, ep.name, "entry-point", version)
        except Exception as exc:  # a broken plugin must not take the others down
            _failed.append(PluginInfo(ep.name, version, "entry-point", error=f"{type(exc).__name__}: {exc}"))
            warnings.warn(f"prunelens plugin {ep.name!r} failed to load: {exc}", stacklevel=2)
    _check_pending()


def load_plugin_file(path: str | os.PathLike[str]) -> ModuleType:
    """Import a plugin from a file the user names (``--plugin path.py``)."""
    load_plugins()
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise PrunelensError(f"plugin file not found: {path}")
    name = f"prunelens_local_{p.stem}"
    if pm.get_plugin(p.stem) is not None:
        return pm.get_plugin(p.stem)
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PrunelensError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PrunelensError(f"plugin {p.name} failed to import: {type(exc).__name__}: {exc}") from exc
    _register(module, p.stem, "file", None)
    _check_pending()
    return module


def _check_pending() -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PrunelensError(f"plugin hook error: {exc}") from exc


def collect(hook_name: str) -> list[tuple[str, Any]]:
    """Call one ``register_*`` hook on every plugin; return (plugin name, item) pairs.

    A plugin whose hook raises is reported (as a warning and in ``plugin_infos``)
    and skipped; the others still register.
    """
    load_plugins()
    items: list[tuple[str, Any]] = []
    for name, plugin in pm.list_name_plugin():
        impl = getattr(plugin, hook_name, None)
        if impl is None or not any(
            h.plugin is plugin for h in getattr(pm.hook, hook_name).get_hookimpls()
        ):
            continue
        found: list[Any] = []
        try:
            impl(register=lambda item, *_a, **_k: found.append(item))
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            if not any(f.name == name and f.error == msg for f in _failed):
                _failed.append(PluginInfo(name, _sources.get(name, ("?", None))[1], "error", error=msg))
                warnings.warn(f"prunelens plugin {name!r} failed in {hook_name}: {exc}", stacklevel=2)
            continue
        items.extend((name, item) for item in found)
    return items


def plugin_infos() -> list[PluginInfo]:
    """Every registered plugin with its hooks and what it registered."""
    load_plugins()
    from .adapters import architecture_registry
    from .methods import method_registry

    owners: dict[str, dict[str, list[str]]] = {}
    for kind, reg in (("methods", method_registry()), ("architectures", architecture_registry())):
        for item_name, (owner, _) in reg.items():
            owners.setdefault(owner, {}).setdefault(kind, []).append(item_name)
    for kind, hook in (("tasks", "register_tasks"), ("rankers", "register_rankers")):
        for owner, item in collect(hook):
            owners.setdefault(owner, {}).setdefault(kind, []).append(getattr(item, "name", repr(item)))
    infos = []
    for name, plugin in pm.list_name_plugin():
        source, version = _sources.get(name, ("?", None))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        own = owners.get(name, {})
        infos.append(
            PluginInfo(
                name=name,
                version=version,
                source=source,
                hooks=hooks,
                methods=sorted(own.get("methods", [])),
                architectures=sorted(own.get("architectures", [])),
                tasks=sorted(own.get("tasks", [])),
                rankers=sorted(own.get("rankers", [])),
                error=next((f.error for f in _failed if f.name == name), None),
            )
        )
    seen = {i.name for i in infos}
    infos.extend(f for f in _failed if f.name not in seen)
    return infos


def registry(hook_name: str, key: Callable[[Any], str]) -> dict[str, tuple[str, Any]]:
    """name -> (plugin name, item) for one hook; a later plugin cannot silently shadow."""
    out: dict[str, tuple[str, Any]] = {}
    for owner, item in collect(hook_name):
        k = key(item)
        if k in out and out[k][0] != owner:
            warnings.warn(f"{hook_name}: {k!r} from {owner!r} overrides the one from {out[k][0]!r}", stacklevel=2)
        out[k] = (owner, item)
    return out

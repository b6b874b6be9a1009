"""The plugin manager: built-ins, installed entry points and user-named files.

Environment:
  PRUNELENS_LOAD_PLUGINS  unset: autoload every installed ``prunelens`` entry point;
                          empty string: autoload none; ``a,b``: only those distributions
                          (or entry-point names; a name matching none is warned about).
                          Built-ins always load.
  PRUNELENS_OVERRIDE      ``drop,angular``: names of built-in methods, rankers, tasks,
                          allocators or architectures that a third-party plugin may replace.
                          Without it a plugin registering a built-in's name is ignored for
                          that name (one warning line), so the built-in keeps working.

Warnings (a broken plugin, a refused registration, an ignored override, an allowlist typo) are one
line on stderr, each printed once per process; ``prunelens plugins`` and every command print the same.

What a plugin registers is checked when it registers (``registration_problem``): a method without a
``name``, without its required override (``perturb``; ``compress_weight`` for a ``WeightMethod``),
with a ``Param`` default its own check refuses or an unknown ``calibration`` is refused with one
warning naming the plugin and the reason; everything else the plugin registers, every other plugin
and every built-in keep working.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from prunelens import hookspecs
from prunelens.errors import PrunelensError
from prunelens.params import declaration_problem

ENTRY_POINT_GROUP = "prunelens"
ENV_ALLOWLIST = "PRUNELENS_LOAD_PLUGINS"
ENV_OVERRIDE = "PRUNELENS_OVERRIDE"
BUILTIN_DISTRIBUTION = "prunelens"
BUILTIN_MODULES = (
    "prunelens_plugins.architectures",
    "prunelens_plugins.magnitude",
    "prunelens_plugins.wanda",
    "prunelens_plugins.sparsegpt",
    "prunelens_plugins.drop",
    "prunelens_plugins.rtn",
    "prunelens_plugins.gptq",
    "prunelens_plugins.checkpoint_swap",
    "prunelens_plugins.rankers",
    "prunelens_plugins.allocators",
    "prunelens_plugins.tasks",
)

# What each built-in registers, declared so that ``prunelens plugins`` lists the built-ins
# without importing them (they import torch). tests/test_plugin_hygiene.py checks this against
# what the modules' hooks really register.
BUILTIN_MANIFEST: dict[str, dict[str, list[str]]] = {
    "architectures": {"hooks": ["register_architectures"],
                      "architectures": ["gemma2", "gemma3_text", "gpt2", "gpt_neox", "llama", "mistral", "olmo2",
                                        "phi3", "qwen2", "qwen3"]},
    "magnitude": {"hooks": ["register_methods"], "methods": ["magnitude"]},
    "wanda": {"hooks": ["register_methods"], "methods": ["wanda"]},
    "sparsegpt": {"hooks": ["register_methods"], "methods": ["sparsegpt"]},
    "drop": {"hooks": ["register_methods"], "methods": ["drop"]},
    "rtn": {"hooks": ["register_methods"], "methods": ["rtn"]},
    "gptq": {"hooks": ["register_methods"], "methods": ["gptq"]},
    "checkpoint_swap": {"hooks": ["register_methods"], "methods": ["checkpoint"]},
    "rankers": {"hooks": ["register_rankers"], "rankers": ["angular", "block_influence", "kl", "kl_pred", "llm_drop"]},
    "allocators": {"hooks": ["register_allocators"],
                   "allocators": ["iterative", "knapsack", "owl", "ranked", "search", "uniform"]},
    "tasks": {"hooks": ["register_tasks"],
              "tasks": ["gen_agreement", "gsm8k", "mc_letters", "mc_nextline", "perplexity"]},
}
REGISTRY_KINDS = (("methods", "register_methods"), ("architectures", "register_architectures"),
                  ("tasks", "register_tasks"), ("rankers", "register_rankers"), ("allocators", "register_allocators"))

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
    allocators: list[str] = field(default_factory=list)
    distribution: str | None = None  # the installed distribution that provides it ("prunelens" for built-ins)


_sources: dict[str, tuple[str, str | None]] = {}
_dists: dict[str, str | None] = {}  # plugin name -> distribution
_failed: list[PluginInfo] = []
_loaded = False
_builtins_loaded = False
_entry_points_loaded = False
_warned: set[str] = set()


def warn_once(message: str) -> None:
    """One line on stderr (no Python warning with a source path), at most once per process."""
    if message in _warned:
        return
    _warned.add(message)
    sys.stderr.write(f"prunelens: warning: {message}\n")
    sys.stderr.flush()


_files: dict[Path, ModuleType] = {}  # plugin files loaded, by resolved path
_file_paths: dict[str, str] = {}  # plugin name -> the file it was loaded from (recorded in stores)


def _register(module: Any, name: str, source: str, version: str | None, dist: str | None = None) -> None:
    if pm.get_plugin(name) is not None or pm.is_registered(module):
        return
    pm.register(module, name=name)
    _sources[name] = (source, version)
    _dists[name] = dist


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
    _load_builtins()
    _load_entry_points()


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from prunelens import __version__

    for modname in BUILTIN_MODULES:
        _register(importlib.import_module(modname), modname.rsplit(".", 1)[-1], "builtin", __version__,
                  BUILTIN_DISTRIBUTION)
    _check_pending()


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    allow = _allowlist()
    matched: set[str] = set()
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ep.name
        if allow is not None:
            hit = {ep.name, dist} & allow
            if not hit:
                continue
            matched |= hit
        version = ep.dist.version if ep.dist else None
        try:
            module = ep.load()
            _register(module, ep.name, "entry-point", version, dist)
        except Exception as exc:  # a broken plugin must not take the others down
            _failed.append(PluginInfo(ep.name, version, "entry-point", error=f"{type(exc).__name__}: {exc}",
                                      distribution=dist))
            warn_once(f"plugin {ep.name!r} ({dist} {version or ''}) failed to load and is skipped: "
                      f"{type(exc).__name__}: {_first_line(exc)}")
    for name in sorted((allow or set()) - matched):
        warn_once(f"{ENV_ALLOWLIST} names {name!r}, which matches no installed prunelens plugin")
    _check_pending()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_plugin_file(path: str | os.PathLike[str]) -> ModuleType:
    """Import a plugin from a file the user names (``--plugin path.py``)."""
    load_plugins()
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise PrunelensError(f"plugin file not found: {path}")
    if p in _files:  # the same file twice: loaded once
        return _files[p]
    # a file named like a built-in or another plugin (drop.py) is still loaded, under its own name
    plugin_name = p.stem if pm.get_plugin(p.stem) is None else f"{p.stem} ({p})"
    name = f"prunelens_local_{p.stem}_{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"
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
    _register(module, plugin_name, "file", None)
    _files[p] = module
    _file_paths[plugin_name] = str(p)
    _check_pending()
    return module


def _check_pending() -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PrunelensError(f"plugin hook error: {exc}") from exc


def collect(hook_name: str, load: bool = True) -> list[tuple[str, Any]]:
    """Call one ``register_*`` hook on every plugin; return (plugin name, item) pairs.

    A plugin whose hook raises is reported (as a warning and in ``plugin_infos``)
    and skipped; the others still register. ``load=False`` asks only the plugins registered so far.
    """
    if load:
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
            impl(register=lambda item, *_a, _found=found, **_k: _found.append(item))
            found = [item for item in found if _accepted(name, hook_name, item)]
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            if not any(f.name == name and f.error == msg for f in _failed):
                _failed.append(PluginInfo(name, _sources.get(name, ("?", None))[1], "error", error=msg,
                                          distribution=_dists.get(name)))
            warn_once(f"plugin {name!r} failed in {hook_name} and is skipped: {type(exc).__name__}: {_first_line(exc)}")
            continue
        items.extend((name, item) for item in found)
    return items


def registration_problem(hook_name: str, item: Any) -> str | None:
    """Why ``item``, registered through ``hook_name``, cannot work, or None (architectures are not checked)."""
    if hook_name == "register_methods":
        methods = sys.modules.get("prunelens.compression.methods")  # not imported: nothing can subclass its Method yet
        if methods is None:
            return f"{item!r} is not a subclass of prunelens.Method"
        problem: str | None = methods.method_problem(item)
        return problem
    if hook_name in ("register_tasks", "register_rankers", "register_allocators"):
        return declaration_problem(item)
    return None


def _accepted(plugin: str, hook_name: str, item: Any) -> bool:
    """Whether ``item`` passes ``registration_problem``; a refusal is one warning and the plugin's error."""
    problem = registration_problem(hook_name, item)
    if problem is None:
        return True
    what = hook_name.removeprefix("register_").rstrip("s")
    label = getattr(item, "name", None) if isinstance(getattr(item, "name", None), str) else None
    label = repr(label) if label else getattr(item, "__qualname__", repr(item))
    msg = f"{what} {label} is refused: {problem}"
    if not any(f.name == plugin and f.error == msg for f in _failed):
        _failed.append(PluginInfo(plugin, _sources.get(plugin, ("?", None))[1], "error", error=msg,
                                  distribution=_dists.get(plugin)))
    warn_once(f"plugin {plugin!r}: {msg}")
    return False


def plugin_infos(import_builtins: bool = True) -> list[PluginInfo]:
    """Every plugin with its hooks and what it registered.

    ``import_builtins=False`` (what ``prunelens plugins`` uses) describes built-ins not yet imported
    from ``BUILTIN_MANIFEST`` instead of importing them (which imports torch); third-party plugins
    are always loaded and asked.
    """
    from prunelens import __version__

    if import_builtins:
        load_plugins()
    else:
        _load_entry_points()
    owners: dict[str, dict[str, list[str]]] = {}
    for kind, hook in REGISTRY_KINDS:
        items = collect(hook, load=import_builtins)
        for owner, item in items:
            owners.setdefault(owner, {}).setdefault(kind, []).extend(_item_keys(item))
        claimed = {} if _builtins_loaded else {n: plugin for plugin, declared in BUILTIN_MANIFEST.items()
                                               for n in declared.get(kind, [])}
        _resolve(items, _item_keys, frozenset(_overridable()), claimed)  # the same shadowing warnings as probe's
    infos = []
    if not _builtins_loaded:
        for name, declared in BUILTIN_MANIFEST.items():
            listed: dict[str, Any] = {k: sorted(declared.get(k, [])) for k, _ in REGISTRY_KINDS}
            infos.append(PluginInfo(name=name, version=__version__, source="builtin", hooks=list(declared["hooks"]),
                                    distribution=BUILTIN_DISTRIBUTION, **listed))
    for name, plugin in pm.list_name_plugin():
        source, version = _sources.get(name, ("?", None))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        own: dict[str, Any] = {k: sorted(owners.get(name, {}).get(k, [])) for k, _ in REGISTRY_KINDS}
        infos.append(
            PluginInfo(
                name=name,
                version=version,
                source=source,
                hooks=hooks,
                error=next((f.error for f in _failed if f.name == name), None),
                distribution=_dists.get(name),
                **own,
            )
        )
    seen = {i.name for i in infos}
    infos.extend(f for f in _failed if f.name not in seen)
    return infos


def _item_keys(item: Any) -> list[str]:
    """The names an item registers under: an architecture's model types, else its ``name``."""
    types = getattr(item, "model_types", None)
    return [str(t) for t in types] if types else [str(getattr(item, "name", repr(item)))]


def provenance(plugin_name: str) -> dict[str, Any]:
    """Where a plugin comes from: ``{"plugin", "distribution", "version", "source"}`` (recorded in stores),
    and ``"file"``, its path, for a plugin loaded with ``--plugin FILE``."""
    source, version = _sources.get(plugin_name, ("?", None))
    out = {"plugin": plugin_name, "distribution": _dists.get(plugin_name), "version": version, "source": source}
    if plugin_name in _file_paths:
        out["file"] = _file_paths[plugin_name]
    return out


def _overridable() -> set[str]:
    return {v.strip() for v in os.environ.get(ENV_OVERRIDE, "").split(",") if v.strip()}


def _state() -> tuple[tuple[tuple[str, int], ...], frozenset[str]]:
    """What a registry depends on: the registered plugins (by name and identity) and the override opt-ins."""
    return tuple((name, id(plugin)) for name, plugin in pm.list_name_plugin()), frozenset(_overridable())


_registries: dict[str, tuple[Any, dict[str, tuple[str, Any]]]] = {}  # hook -> (state it was built in, registry)


def registry(hook_name: str, key: Callable[[Any], str | Iterable[str]]) -> dict[str, tuple[str, Any]]:
    """name -> (plugin name, item) for one hook, built once and rebuilt only when the plugins change.

    ``key`` gives the name(s) an item registers under (an architecture: each of its model types).
    The result is cached per hook and rebuilt when a plugin is registered or unregistered
    (``load_plugin_file``, entry points) or ``PRUNELENS_OVERRIDE`` changes.

    A built-in's name taken by another plugin keeps the built-in unless the name is listed in
    ``PRUNELENS_OVERRIDE`` (explicit opt-in); a clash between two third-party plugins keeps the
    one loaded last. Either way one warning line says what happened.
    """
    load_plugins()
    state = _state()
    cached = _registries.get(hook_name)
    if cached is not None and cached[0] == state:
        return dict(cached[1])
    out = _build_registry(hook_name, key, state[1])
    _registries[hook_name] = (state, out)
    return dict(out)


def _build_registry(hook_name: str, key: Callable[[Any], str | Iterable[str]],
                    allowed: frozenset[str]) -> dict[str, tuple[str, Any]]:
    return _resolve(collect(hook_name), key, allowed)


def _resolve(items: list[tuple[str, Any]], key: Callable[[Any], str | Iterable[str]], allowed: frozenset[str],
             claimed: dict[str, str] | None = None) -> dict[str, tuple[str, Any]]:
    """name -> (plugin, item), warning about every name taken twice (the one rule ``registry`` and
    ``prunelens plugins`` share). ``claimed``: names of built-ins not imported (name -> built-in plugin)."""
    out: dict[str, tuple[str, Any]] = {k: (owner, None) for k, owner in (claimed or {}).items()}
    builtins = set((claimed or {}).values()) | {n for n, (source, _) in _sources.items() if source == "builtin"}
    # built-ins first, whatever the registration order (stable otherwise)
    for owner, item in sorted(items, key=lambda pair: pair[0] not in builtins):
        names = key(item)
        for k in [names] if isinstance(names, str) else names:
            if k in out and out[k][0] != owner:
                prev = out[k][0]
                if prev in builtins and k not in allowed:
                    warn_once(f"plugin {owner!r} registers {k!r}, a built-in name: ignored, the built-in is used "
                              f"(set {ENV_OVERRIDE}={k} to use {owner!r}'s)")
                    continue
                warn_once(f"{k!r} from plugin {owner!r} replaces the one from {prev!r}")
            out[k] = (owner, item)
    return out

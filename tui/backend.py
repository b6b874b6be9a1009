"""The TUI's thin door to the core: open a store, rank units, build a plan.

Every function calls the real implementation (``prunelens_store.reader``,
``prunelens.ranking``, ``prunelens.plans``); nothing here ranks or plans by itself. A
missing piece becomes a ``PrunelensError`` that the UI shows as a message.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PrunelensError(f"{what} is not available ({module}: {exc})") from exc


def open_store(path: str | Path):
    """The probe store at ``path`` as a lazy ``xarray.Dataset`` (errors are ``PrunelensError``).

    A half-written store (a probe still running or interrupted) opens too: its cells not
    done yet are NaN, and the Runs screen says how many are done.
    """
    from prunelens_store.reader import open_store as read

    try:
        return clean_labels(read(Path(path), allow_incomplete=True))
    except PrunelensError:
        raise
    except Exception as exc:  # a damaged store must not crash the UI
        raise PrunelensError(f"{path}: cannot read the store ({type(exc).__name__}: {exc})") from exc


def clean_labels(ds):
    """``ds`` with terminal escapes and control characters removed from its labels and string attrs.

    The screens show labels and attrs; a store is untrusted input. (Rich markup such as
    ``[/]`` is escaped where it is drawn: ``prunelens.safe_text.esc``.)
    """
    from prunelens.safe_text import clean

    coords = {}
    for dim in ("method", "unit", "kind"):
        if dim in ds.coords:
            values = [str(v) for v in ds[dim].values]
            cleaned = [clean(v) for v in values]
            if cleaned != values and len(set(cleaned)) == len(set(values)):
                coords[dim] = (ds[dim].dims, cleaned) if dim == "kind" else cleaned
    if coords:
        ds = ds.assign_coords(coords)
    ds.attrs = {k: clean(v, oneline=False) if isinstance(v, str) else v for k, v in ds.attrs.items()}
    return ds


def ranker_choices() -> list[tuple[str, str]]:
    """(name, description) of every ranking strategy that needs only the store."""
    ranking = _import("prunelens.ranking", "ranking")
    out = []
    for name, entry in sorted(ranking.ranker_registry().items()):
        cls = entry[1] if isinstance(entry, tuple) else entry
        if getattr(cls, "needs", "store") == "store":
            out.append((name, str(getattr(cls, "description", ""))))
    return out


def rank_units(ds, **choices: Any):
    """``prunelens.ranking.rank_units`` (a DataFrame sorted safest first)."""
    return _import("prunelens.ranking", "ranking").rank_units(ds, **choices)


def plan_from_store(ds, **choices: Any):
    """``prunelens.plans.plan_from_store`` (a ``Plan``)."""
    return _import("prunelens.plans", "plans").plan_from_store(ds, **choices)


def plan_unit_names(plan: Any) -> list[str]:
    """The unit names a plan selects, in plan order."""
    names = []
    for u in getattr(plan, "units", []) or []:
        if isinstance(u, str):
            names.append(u)
        elif isinstance(u, dict):
            names.append(str(u.get("unit") or u.get("name")))
        else:
            names.append(str(getattr(u, "unit", None) or getattr(u, "name", u)))
    return names


def save_plan(plan: Any, path: str | Path, mergekit: bool) -> list[Path]:
    """Write the plan JSON (and the mergekit YAML beside it when ``mergekit``); return the paths."""
    path = Path(path).expanduser()
    if not path.name:
        raise PrunelensError("type a file name for the plan")
    if path.parent and not path.parent.exists():
        raise PrunelensError(f"{path.parent}: no such directory")
    plan.save(path)
    written = [path]
    if mergekit:
        yaml_path = path.with_suffix(".yaml")
        yaml_path.write_text(plan.to_mergekit_yaml())
        written.append(yaml_path)
    return written

"""The TUI's thin door to the core: open a store, rank units, build and export a plan.

Every function calls the real implementation (``prunelens_store.reader``,
``prunelens.plan.ranking``, ``prunelens.plan.unit_selection``, ``prunelens.plan.document``); nothing here ranks or
plans by itself. A missing piece becomes a ``PrunelensError`` that the UI shows as a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import prunelens.plan.ranking
import prunelens.plan.unit_selection
from prunelens.errors import PrunelensError
from prunelens.plan.document import Plan
from prunelens.workflow.export import export_plan, prepare_plan


def open_store(path: str | Path, verify: bool = True):
    """The probe store at ``path`` as a lazy ``xarray.Dataset`` (errors are ``PrunelensError``).

    A half-written store (a probe still running or interrupted) opens too: its cells not
    done yet are NaN, and the Runs screen says how many are done. ``verify``: read every done
    chunk once (``prunelens_store.reader.open_store``); off for the refresh of a store being written.
    """
    from prunelens_store.reader import open_store as read

    try:
        return clean_labels(read(Path(path), allow_incomplete=True, verify=verify))
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
    return [(name, cls.description) for name, (_, cls) in sorted(prunelens.plan.ranking.ranker_registry().items())
            if cls.needs == "store"]


def rank_units(ds: Any, **choices: Any) -> Any:
    """``prunelens.plan.ranking.rank_units`` (a DataFrame sorted safest first)."""
    return prunelens.plan.ranking.rank_units(ds, **choices)


def store_path_of(path: str | Path | None) -> str:
    """The store path a plan records: absolute, as ``prunelens plan`` writes it (so ``validate`` works anywhere)."""
    if path is None:
        raise PrunelensError("no store open")
    return str(Path(path).expanduser().resolve())


def plan_from_store(ds: Any, ranked: Any, *, budget: str, store_path: str, **choices: Any) -> Plan:
    """``prunelens.plan.unit_selection.plan_from_store`` on the ranking already shown (the store is not ranked again),
    then ``workflow.export.prepare_plan`` as ``prunelens plan`` does (the data record; no unit, or every layer
    removed, is an error)."""
    plan = prunelens.plan.unit_selection.plan_from_store(ds, ranking=ranked, budget=budget,
                                                         store_path=store_path_of(store_path), **choices)
    return prepare_plan(plan, ds)


def exports_mergekit(plan: Plan) -> bool:
    """A block plan whose every unit is removed (drop) also exports a mergekit YAML."""
    return plan.kind == "block" and plan.removes_units


def save_plan(plan: Plan, path: str | Path) -> list[Path]:
    """Write the plan JSON (and the mergekit YAML beside it for a block-removal plan) as ``prunelens plan`` does
    (``workflow.export.export_plan``: every text built first, then atomic writes); return the paths."""
    path = Path(path).expanduser()
    if not path.name:
        raise PrunelensError("type a file name for the plan")
    if path.parent and not path.parent.exists():
        raise PrunelensError(f"{path.parent}: no such directory")
    if str(path) == "-":  # a file named "-" is a file here, not standard output
        path = path.absolute()
    return export_plan(plan, path, path.with_suffix(".yaml") if exports_mergekit(plan) else None)

"""Find probe stores under the paths the user gave and summarise their provenance."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prunelens.errors import PrunelensError
from prunelens.safe_text import clean
from prunelens_store.view import StoreView

from . import backend

MAX_DEPTH = 4


def is_store_dir(path: Path) -> bool:
    return path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").exists())


def find_stores(paths: Sequence[str | Path]) -> list[Path]:
    """Each path that is a store, plus the stores found (not inside other stores) under each directory."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if is_store_dir(path) or not path.is_dir():
            found.append(path)  # a missing path or plain file becomes an error row
            continue
        for root, dirs, _files in os.walk(path):
            here = Path(root)
            depth = len(here.relative_to(path).parts)
            for d in sorted(dirs):
                if is_store_dir(here / d) and not d.startswith("."):
                    found.append(here / d)
            # hidden directories (a killed run's ``.NAME.tmp-*``, .git, ...) are never stores to list
            dirs[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirs if not is_store_dir(here / d)
                                                           and not d.startswith("."))
    return found


@dataclass
class StoreSummary:
    path: Path
    error: str | None = None
    model: str = ""
    methods: list[str] = field(default_factory=list)
    units: int = 0
    samples: int = 0
    steps: int = 0
    temperatures: list[float] = field(default_factory=list)
    created: str = ""
    done: int = 0
    cells: int = 0
    complete: bool = False
    attrs: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.complete and self.done == self.cells:
            return "complete"
        return f"resumable {self.done}/{self.cells}"


def _truthy(value) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def summarize(path: Path) -> StoreSummary:
    """Provenance of one store from its attrs and ``done`` mask; errors become ``.error``."""
    try:
        ds = backend.open_store(path)
        done = StoreView.of(ds, path).done
    except PrunelensError as exc:
        return StoreSummary(path, error=clean(exc))
    except Exception as exc:  # never let one bad store take the UI down
        return StoreSummary(path, error=clean(f"{type(exc).__name__}: {exc}"))
    attrs = dict(ds.attrs)
    return StoreSummary(
        path, model=str(attrs.get("model_id", "?")), methods=[str(m) for m in ds["method"].values],
        units=int(ds.sizes["unit"]), samples=int(ds.sizes["sample"]), steps=int(ds.sizes["step"]),
        temperatures=[float(t) for t in ds["temperature"].values], created=str(attrs.get("created", ""))[:19],
        done=int(done.sum()), cells=int(done.size), complete=_truthy(attrs.get("complete", False)), attrs=attrs,
    )


def provenance_lines(s: StoreSummary) -> list[tuple[str, str]]:
    """(label, value) rows for the details panel."""
    if s.error:
        return [("path", str(s.path)), ("error", s.error)]
    rows = [("path", str(s.path)), ("model", f"{s.model}  hash {s.attrs.get('config_hash', '?')}"),
            ("methods", ", ".join(s.methods)), ("units", str(s.units)),
            ("samples x steps", f"{s.samples} x {s.steps}"),
            ("temperatures", ", ".join(f"{t:g}" for t in s.temperatures)),
            ("created", s.created or "?"), ("status", s.status)]
    if s.done < s.cells or not s.complete:
        rows.append(("note", "half-written: while a probe writes it, new cells show as they land; an interrupted "
                             "probe finishes when the same prunelens probe command is rerun; cells not done yet "
                             "show as ·"))
    if "nonfinite_cells" in s.attrs:  # shown by every command that reads a store
        rows.append(("non-finite", f"{s.attrs['nonfinite_cells']} cells ({s.attrs.get('nonfinite_values', 0)} values)"
                                   + ("; those units rank last or unranked, never planned"
                                      if int(s.attrs["nonfinite_cells"] or 0) else "")))
    for key in ("readout", "dtype", "device", "seed", "kl_convention"):
        if key in s.attrs:
            rows.append((key, str(s.attrs[key])))
    if "spearman_kl_pred_vs_kl" in s.attrs:
        rows.append(("spearman", _short_json(s.attrs["spearman_kl_pred_vs_kl"])))
    return rows


def _short_json(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

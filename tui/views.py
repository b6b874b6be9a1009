"""The numbers each screen shows, read through the store's ``StoreView`` (only the slice on screen).

Temperature choice, unit means (done-aware, a NaN or inf kept) and Spearman come from
``prunelens_store``; this module only shapes them for the screens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunelens_store.schema import SPACES
from prunelens_store.stats import finite_pairs
from prunelens_store.stats import spearman as store_spearman
from prunelens_store.view import StoreView

from .selection import Selection


def _nanmean(a: np.ndarray, axis: Any) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN cells (not yet probed) stay NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmean(a, axis=axis))


def units_of(ds: Any, kind: str) -> list[str]:
    """Unit labels of one kind (``all``: every unit), in store order."""
    units = [str(u) for u in ds["unit"].values]
    if kind == "all":
        return units
    kinds = [str(k) for k in ds["kind"].values]
    return [u for u, k in zip(units, kinds) if k == kind]


def unit_means(ds: Any, var: str, sel: Selection, units: list[str], space: str | None = None) -> np.ndarray:
    """Per-unit mean over samples and steps at the selection (cached by the store view)."""
    view = StoreView.of(ds)
    return view.unit_means(var, method=sel.method, temperature=view.temperature(sel.temperature),
                           locality=sel.locality, timing=sel.timing, units=units,
                           space=(space or sel.space) if "space" in ds[var].dims else None)


@dataclass
class Heatmap:
    values: np.ndarray  # [unit, step], mean over samples
    units: list[str]
    steps: list[int]
    title: str


def heatmap(ds: Any, sel: Selection) -> Heatmap:
    """unit x step of the selected metric, averaged over samples."""
    units = units_of(ds, sel.kind)
    spaced = "space" in ds[sel.metric].dims
    da = StoreView.of(ds).cell(sel.metric, method=sel.method, locality=sel.locality, timing=sel.timing,
                               temperature=sel.temperature, space=sel.space if spaced else None, units=units)
    values = _nanmean(np.asarray(da.transpose("unit", "sample", "step").values, dtype=np.float64), axis=1)
    space = f" {sel.space}" if spaced else ""
    temp = f" T={sel.temperature:g}" if "temperature" in ds[sel.metric].dims else ""
    return Heatmap(values, units, [int(s) for s in ds["step"].values],
                   f"{sel.metric}{space}{temp} · {sel.method} · {sel.locality} · {sel.timing}")


@dataclass
class Curves:
    kind: str
    layers: np.ndarray
    series: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (measured, predicted) per layer


def curve_kind(ds: Any, kind: str) -> str:
    """Curves run across layers for one unit kind; ``all`` shows whole blocks if present."""
    if kind != "all":
        return kind
    kinds = [str(k) for k in ds["kind"].values]
    return "block" if "block" in kinds else kinds[0]


def layer_curves(ds: Any, sel: Selection) -> Curves:
    """The three spaces' 1-cos and KL across layers, measured beside predicted."""
    kind = curve_kind(ds, sel.kind)
    units = units_of(ds, kind)
    layers = np.asarray(ds["layer"].sel(unit=units).values)
    series = {f"1-cos {space}": (unit_means(ds, "cos_dev", sel, units, space),
                                 unit_means(ds, "cos_dev_pred", sel, units, space)) for space in SPACES}
    series["KL"] = (unit_means(ds, "kl", sel, units), unit_means(ds, "kl_pred", sel, units))
    return Curves(kind, layers, series)


def spearman(x: Any, y: Any) -> tuple[float, int]:
    """The store's Spearman rank correlation over the finite pairs, and how many pairs that is."""
    return store_spearman(x, y), int(finite_pairs(x, y).sum())


@dataclass
class Theory:
    units: list[str]
    kl_pred: np.ndarray
    kl: np.ndarray
    cos_pred: np.ndarray  # 1-cos(p,q) predicted
    cos: np.ndarray  # 1-cos(p,q) measured

    def rho(self, which: str) -> tuple[float, int]:
        return spearman(self.kl_pred, self.kl) if which == "kl" else spearman(self.cos_pred, self.cos)


def theory(ds: Any, sel: Selection) -> Theory:
    """Predicted vs measured KL and 1-cos(p) per unit (means over samples and steps)."""
    units = units_of(ds, sel.kind)
    return Theory(units, unit_means(ds, "kl_pred", sel, units), unit_means(ds, "kl", sel, units),
                  unit_means(ds, "cos_dev_pred", sel, units, "probability"),
                  unit_means(ds, "cos_dev", sel, units, "probability"))

"""The numbers each screen shows, read lazily from a store (only the slice on screen)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .selection import Selection

SPACES = ("embedding", "logit", "probability")


def _nanmean(a: np.ndarray, axis) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN cells (not yet probed) stay NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def cell(ds, var: str, sel: Selection, units=None, space: str | None = None, all_spaces: bool = False):
    """``ds[var]`` narrowed to the selection's method/locality/timing (+space, temperature); lazy."""
    da = ds[var]
    idx = {"method": sel.method, "locality": sel.locality, "timing": sel.timing}
    if "space" in da.dims and not all_spaces:
        idx["space"] = space or sel.space
    if "temperature" in da.dims:
        temps = np.asarray(ds["temperature"].values, dtype=float)
        idx["temperature"] = temps[int(np.argmin(np.abs(temps - sel.temperature)))]
    da = da.sel({k: v for k, v in idx.items() if k in da.dims})
    if units is not None:
        da = da.sel(unit=list(units))
    return da


def units_of(ds, kind: str) -> list[str]:
    """Unit labels of one kind (``all``: every unit), in store order."""
    units = [str(u) for u in ds["unit"].values]
    if kind == "all":
        return units
    kinds = [str(k) for k in ds["kind"].values]
    return [u for u, k in zip(units, kinds) if k == kind]


@dataclass
class Heatmap:
    values: np.ndarray  # [unit, step], mean over samples
    units: list[str]
    steps: list[int]
    title: str


def heatmap(ds, sel: Selection) -> Heatmap:
    """unit x step of the selected metric, averaged over samples."""
    units = units_of(ds, sel.kind)
    da = cell(ds, sel.metric, sel, units=units)
    values = _nanmean(np.asarray(da.transpose("unit", "sample", "step").values, dtype=np.float64), axis=1)
    space = f" {sel.space}" if "space" in ds[sel.metric].dims else ""
    temp = f" T={sel.temperature:g}" if "temperature" in ds[sel.metric].dims else ""
    return Heatmap(values, units, [int(s) for s in ds["step"].values],
                   f"{sel.metric}{space}{temp} · {sel.method} · {sel.locality} · {sel.timing}")


def unit_means(ds, var: str, sel: Selection, units: list[str], space: str | None = None) -> np.ndarray:
    """Per-unit mean over samples and steps."""
    da = cell(ds, var, sel, units=units, space=space)
    return _nanmean(np.asarray(da.transpose("unit", "sample", "step").values, dtype=np.float64), axis=(1, 2))


@dataclass
class Curves:
    kind: str
    layers: np.ndarray
    series: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (measured, predicted) per layer


def curve_kind(ds, kind: str) -> str:
    """Curves run across layers for one unit kind; ``all`` shows whole blocks if present."""
    if kind != "all":
        return kind
    kinds = [str(k) for k in ds["kind"].values]
    return "block" if "block" in kinds else kinds[0]


def layer_curves(ds, sel: Selection) -> Curves:
    """The three spaces' 1-cos and KL across layers, measured beside predicted."""
    kind = curve_kind(ds, sel.kind)
    units = units_of(ds, kind)
    layers = np.asarray(ds["layer"].sel(unit=units).values)
    series = {}
    by_space = {}
    for var in ("cos_dev", "cos_dev_pred"):  # one read of each chunk for all three spaces
        da = cell(ds, var, sel, units=units, all_spaces=True).sel(space=list(SPACES))
        by_space[var] = _nanmean(np.asarray(da.transpose("unit", "space", "sample", "step").values,
                                            dtype=np.float64), axis=(2, 3))
    for i, space in enumerate(SPACES):
        series[f"1-cos {space}"] = (by_space["cos_dev"][:, i], by_space["cos_dev_pred"][:, i])
    series["KL"] = (unit_means(ds, "kl", sel, units), unit_means(ds, "kl_pred", sel, units))
    return Curves(kind, layers, series)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Spearman rank correlation over the finite pairs, and how many pairs that is."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n
    import pandas as pd  # lazily: keeps the first paint free of pandas

    return float(pd.Series(x[ok]).corr(pd.Series(y[ok]), method="spearman")), n


@dataclass
class Theory:
    units: list[str]
    kl_pred: np.ndarray
    kl: np.ndarray
    cos_pred: np.ndarray  # 1-cos(p,q) predicted
    cos: np.ndarray  # 1-cos(p,q) measured

    def rho(self, which: str) -> tuple[float, int]:
        return spearman(self.kl_pred, self.kl) if which == "kl" else spearman(self.cos_pred, self.cos)


def theory(ds, sel: Selection) -> Theory:
    """Predicted vs measured KL and 1-cos(p) per unit (means over samples and steps)."""
    units = units_of(ds, sel.kind)
    return Theory(units, unit_means(ds, "kl_pred", sel, units), unit_means(ds, "kl", sel, units),
                  unit_means(ds, "cos_dev_pred", sel, units, "probability"),
                  unit_means(ds, "cos_dev", sel, units, "probability"))

"""The statistics every reader of a store shares: unit means and Spearman rank correlation (numpy only)."""

from __future__ import annotations

import numpy as np


def cell_means(values: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Mean over every axis but the first (unit), in float64; units not ``done`` give NaN.

    Non-finite values are never skipped: one NaN makes the unit's mean NaN, one
    inf makes it inf, so a diverged unit can never look safe.
    """
    a = np.asarray(values, dtype=np.float64)
    a = a.reshape(a.shape[0], -1)
    with np.errstate(invalid="ignore"):
        mean = a.mean(axis=1) if a.shape[1] else np.full(a.shape[0], np.nan)
    return np.where(np.asarray(done, dtype=bool).reshape(-1), mean, np.nan)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]] if len(a) else np.zeros(0, dtype=bool)
    group = np.cumsum(first) - 1
    starts = np.nonzero(first)[0]
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[group]
    return ranks


def finite_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where both ``x`` and ``y`` are finite (the pairs a correlation uses)."""
    finite_x = np.isfinite(np.asarray(x, dtype=np.float64).reshape(-1))
    return finite_x & np.isfinite(np.asarray(y, dtype=np.float64).reshape(-1))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation over the pairs where both are finite (ties share their mean rank).

    NaN when fewer than 3 pairs remain or either side is constant (no ranking to correlate).
    """
    ok = finite_pairs(x, y)
    if ok.sum() < 3:
        return float("nan")
    ra = average_ranks(np.asarray(x, dtype=np.float64).reshape(-1)[ok])
    rb = average_ranks(np.asarray(y, dtype=np.float64).reshape(-1)[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))

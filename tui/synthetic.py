"""Deterministic synthetic probe stores (schema ``template()`` filled with seeded numbers).

Used by the TUI tests, the first-paint bench and ``python -m prunelens_tui --demo``. The
numbers follow the store's shape and rough physics (1-cos grows embedding < logit <
probability, KL ~ 1/T^2, predictions near the measurements) but mean nothing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from prunelens_store.schema import template

KIND_SCALE = {"block": 3.0, "attn": 0.6, "mlp": 1.2}
SPACE_SCALE = {"embedding": 0.01, "logit": 0.02, "probability": 0.1}


def unit_names(num_layers: int, kinds: Sequence[str] = ("block", "attn", "mlp")
               ) -> tuple[list[str], list[int], list[str]]:
    """Store unit labels, layers and kinds, ordered by layer then kind."""
    names, layers, out_kinds = [], [], []
    for i in range(num_layers):
        for k in kinds:
            names.append(f"L{i}" if k == "block" else f"L{i}.{k}")
            layers.append(i)
            out_kinds.append(k)
    return names, layers, out_kinds


def synthetic_dataset(
    methods: Sequence[str] = ("drop", "magnitude:sparsity=0.5"),
    num_layers: int = 4,
    kinds: Sequence[str] = ("block", "attn", "mlp"),
    samples: int = 3,
    steps: int = 8,
    temperatures: Sequence[float] = (0.7, 1.0),
    seed: int = 0,
    done_fraction: float = 1.0,
    model_id: str = "tiny-llama-synthetic",
    candidates: bool = True,
) -> xr.Dataset:
    """A filled dataset; cells beyond ``done_fraction`` (in unit order) stay NaN / not done.

    ``candidates``: the prompts had answer candidates (a ``candidates`` variable, ``cand_*`` filled);
    without them ``cand_*`` stay NaN, as in a store probed on plain text."""
    rng = np.random.default_rng(seed)
    units, layers, unit_kinds = unit_names(num_layers, kinds)
    attrs = {
        "model_id": model_id, "config_hash": "0123456789abcdef", "readout": "norm", "dtype": "float32",
        "device": "cpu", "seed": seed, "prompts_hash": "synthetic", "created": "2026-01-01T00:00:00+00:00",
        "methods": json.dumps({m: {} for m in methods}), "versions": json.dumps({"prunelens": "0.1.0"}),
        "complete": bool(done_fraction >= 1.0),
    }
    ds = template(methods, units, layers, unit_kinds, samples, steps, temperatures, attrs=attrs)
    cell = _cell_scale(rng, len(methods), layers, unit_kinds, num_layers, samples, steps)
    _fill_measurements(ds, rng, cell, temperatures, candidates)
    fill_schema_2(ds, np.random.default_rng(seed + 1))  # its own stream: the numbers above stay as they were
    U = len(units)
    n_done = int(round(done_fraction * U))
    ds["done"].values[:, :n_done] = True
    for name in ds.data_vars:
        if name not in ("done", "candidates") and n_done < U:
            ds[name].values[:, n_done:] = -1 if name == "free_tokens" else np.nan
    return ds


def _cell_scale(rng: np.random.Generator, M: int, layers: list[int], unit_kinds: list[str], num_layers: int,
                N: int, S: int) -> np.ndarray:
    """Each cell's scale ``[method, unit, locality, timing, sample, step]``: by unit kind and depth (middle layers
    safest), later methods milder, propagated and free-running larger, growing over the steps."""
    U = len(layers)
    depth = np.asarray(layers) / max(1, num_layers - 1)
    unit_scale = np.asarray([KIND_SCALE[k] for k in unit_kinds]) * (0.3 + 2.5 * (depth - 0.45) ** 2)
    unit_scale = unit_scale * rng.lognormal(0.0, 0.4, U)
    base = (np.linspace(1.0, 0.3, M)[:, None] * unit_scale[None, :]).astype(np.float32)  # [M, U]
    growth = np.stack([1 + 0.02 * np.arange(S), 1 + 0.08 * np.arange(S)]).astype(np.float32)  # timing x step
    local_prop = np.asarray([1.0, 1.6], dtype=np.float32)
    # cell scale [M, U, loc, timing, sample, step]
    return (base[:, :, None, None, None, None] * local_prop[None, None, :, None, None, None]
            * growth[None, None, None, :, None, :]
            * rng.lognormal(0.0, 0.25, (M, U, 1, 1, N, S)).astype(np.float32))


def _fill_measurements(ds: xr.Dataset, rng: np.random.Generator, cell: np.ndarray, temperatures: Sequence[float],
                       candidates: bool) -> None:
    """The 1-cos, KL, agreement, candidate and free-token variables from the cell scales (drawn from ``rng`` in a
    fixed order)."""
    M, U, samples = cell.shape[0], cell.shape[1], cell.shape[4]
    temps = np.asarray(temperatures, dtype=np.float64)
    inv_t2 = (1.0 / temps**2).astype(np.float32)

    def noisy(x: np.ndarray, sigma: float) -> np.ndarray:
        return (x * rng.lognormal(0.0, sigma, x.shape)).astype(np.float32)

    space_scale = np.asarray([SPACE_SCALE[s] for s in ds["space"].values], dtype=np.float32)
    t_of_space = np.where(ds["space"].values == "probability", 1.0, 0.0).astype(np.float32)
    # [M,U,loc,tim,space,T,N,S]: probability space scales like 1/T^2, others do not depend on T
    t_factor = 1.0 + t_of_space[:, None] * (inv_t2[None, :] - 1.0)
    cos = cell[:, :, :, :, None, None] * (space_scale[:, None] * t_factor)[None, None, None, None, :, :, None, None]
    cos = np.minimum(cos, 1.0)
    ds["cos_dev"].values[:] = noisy(cos, 0.1)
    bias = rng.lognormal(0.0, 0.35, (M, U, 1, 1, 1, 1, 1, 1)).astype(np.float32)  # Taylor misses per unit
    ds["cos_dev_pred"].values[:] = noisy(cos * bias, 0.3)
    ds["rel_norm"].values[:] = np.sqrt(2 * cos).astype(np.float32)
    kl = 0.2 * cell[:, :, :, :, None] * inv_t2[None, None, None, None, :, None, None]
    ds["kl"].values[:] = noisy(kl, 0.1)
    ds["kl_pred"].values[:] = noisy(kl * bias[..., 0], 0.3)
    ds["top1_agree"].values[:] = (rng.random(cell.shape) > np.minimum(kl.mean(axis=4), 1.0)).astype(np.float32)
    cand_kl = noisy(kl * 0.5, 0.2)
    cand_agree = (rng.random(kl.shape) > np.minimum(kl, 1.0)).astype(np.float32)
    if candidates:  # drawn either way, so the other variables' numbers do not depend on it
        ds["cand_kl"].values[:] = cand_kl
        ds["cand_top1_agree"].values[:] = cand_agree
        ds["cand_mass"].values[:] = np.clip(0.8 - kl, 0.0, 1.0)
        ds["cand_rank"].values[:] = np.floor(np.minimum(kl * 10, 20)).astype(np.float32)
        ds["candidates"] = (("sample", "candidate"), np.tile(np.arange(4, dtype=np.int64) + 10, (samples, 1)))
    ds["free_tokens"].values[:] = rng.integers(0, 96, ds["free_tokens"].shape)


def fill_schema_2(ds: xr.Dataset, rng: np.random.Generator) -> None:
    """The schema-2 metrics, shaped like the ones they refine: the parts of ``rel_norm`` along and across x,
    the variance of dz over the vocabulary and over the top-k next to ``kl_pred``, and |dz| per row."""

    def noisy(x: np.ndarray, sigma: float) -> np.ndarray:
        return (x * rng.lognormal(0.0, sigma, x.shape)).astype(np.float32)

    rel = ds["rel_norm"].values
    ds["rel_par"].values[:] = noisy(rel * 0.3, 0.1)
    ds["rel_perp"].values[:] = noisy(rel * 0.95, 0.05)
    kl_pred = ds["kl_pred"].values
    for name, scale in (("dz_var_uniform", 1.5), ("dz_var_top5", 0.6), ("dz_var_top10", 0.8)):
        ds[name].values[:] = noisy(kl_pred * scale, 0.2)
    row = np.sqrt(kl_pred.mean(axis=4))  # [method, unit, locality, timing, sample, step]: no temperature
    ds["dz_l1"].values[:] = noisy(row * 0.8, 0.1)
    ds["dz_l2"].values[:] = noisy(row, 0.1)


def write_store(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a Zarr v3 store chunked ``method=1, unit=1`` (the schema's chunking)."""
    encoding = {}
    for name, var in ds.data_vars.items():
        encoding[name] = {"chunks": tuple(1 if d in ("method", "unit") else ds.sizes[d] for d in var.dims)}
    with warnings.catch_warnings():  # zarr warns that fixed-width unicode labels have no v3 spec yet
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), mode="w", consolidated=False, zarr_format=3, encoding=encoding)
    return Path(path)


def make_store(path: str | Path, **kwargs) -> Path:
    """``synthetic_dataset(**kwargs)`` written to ``path``."""
    return write_store(synthetic_dataset(**kwargs), path)

"""The probe store's vocabulary and shape: dimensions, labels, variables and attrs (schema version 2).

This module is the contract between the probe engine (writer), ranking, reports and the
TUI (readers): every label set (``SPACES``, ``LOCALITIES``, ``TIMINGS``) and every variable's
dims, meaning and units live here once, in ``SCHEMA``. See docs/store.md for the meaning of
every variable.

Version 2 added ``rel_par``, ``rel_perp``, ``dz_var_uniform``, ``dz_var_top5``,
``dz_var_top10``, ``dz_l1`` and ``dz_l2`` (``added_in=2``); version-1 stores still read
(``variables_for(1)`` is what they hold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

SCHEMA_VERSION = 2
SPACES = ("embedding", "logit", "probability")
LOCALITIES = ("local", "propagated", "sublayer")  # sublayer: the unit's own residual-stream output (docs/probe.md)
DEFAULT_LOCALITIES = ("local", "propagated")  # what a probe measures unless asked
TIMINGS = ("teacher_forced", "free_running")
KL_CONVENTION = "KL(p_dense || q_perturbed)"

CELL = ("method", "unit", "locality", "timing")  # every per-unit metric leads with these
_SPACE_T = CELL + ("space", "temperature", "sample", "step")
_T = CELL + ("temperature", "sample", "step")
_ROW = CELL + ("sample", "step")


@dataclass(frozen=True)
class Variable:
    """One per-unit store variable: its dims (in order), meaning, CF units and storage."""

    dims: tuple[str, ...]
    long_name: str
    units: str  # CF style: "1" = dimensionless
    added_in: int = 1  # the schema version that introduced it
    dtype: str = "float32"
    fill: Any = np.nan  # what an unwritten cell holds

    @property
    def is_metric(self) -> bool:
        """A float measurement per (method, unit, locality, timing) cell (what the engine fills)."""
        return self.dims[: len(CELL)] == CELL and self.dtype == "float32"


# The one table: adding a store variable means adding one row here (and computing it in probe/metrics.py).
SCHEMA: dict[str, Variable] = {
    "cos_dev": Variable(_SPACE_T, "measured 1 - cos(x, x + dx) in the space", "1"),
    "cos_dev_pred": Variable(_SPACE_T, "Taylor prediction of 1 - cos", "1"),
    "rel_norm": Variable(_SPACE_T, "relative deviation norm ||dx|| / ||x||", "1"),
    "rel_par": Variable(_SPACE_T, "relative deviation along x, ||dx_parallel|| / ||x||", "1", added_in=2),
    "rel_perp": Variable(_SPACE_T, "relative deviation orthogonal to x, ||dx_orthogonal|| / ||x||", "1", added_in=2),
    "kl": Variable(_T, "measured KL(p_dense || q_perturbed) of the next-token distribution", "nat"),
    "kl_pred": Variable(_T, "predicted KL: Var_p(dz) / (2 T^2)", "nat"),
    "top1_agree": Variable(_ROW, "top-1 token of dense and perturbed agree (1.0 or 0.0)", "1"),
    "dz_var_uniform": Variable(_T, "Var_uniform(dz) / (2 T^2)", "nat", added_in=2),
    "dz_var_top5": Variable(_T, "Var of dz over the dense top-5 (p renormalised) / (2 T^2)", "nat", added_in=2),
    "dz_var_top10": Variable(_T, "Var of dz over the dense top-10 (p renormalised) / (2 T^2)", "nat", added_in=2),
    "dz_l1": Variable(_ROW, "mean |dz| over the vocabulary", "logit", added_in=2),
    "dz_l2": Variable(_ROW, "root mean square of dz over the vocabulary", "logit", added_in=2),
    "cand_kl": Variable(_T, "KL over the renormalised answer candidates", "nat"),
    "cand_top1_agree": Variable(_T, "best candidate of dense and perturbed agree (1.0 or 0.0)", "1"),
    "cand_mass": Variable(_T, "probability mass of the candidates under q", "1"),
    "cand_rank": Variable(_T, "rank of the best candidate under q (0 = top)", "1"),
    "free_tokens": Variable(("method", "unit", "sample", "step"),
                            "token ids the perturbed model generated (free-running; -1 = none)", "token id",
                            dtype="int64", fill=-1),
    "done": Variable(("method", "unit"), "the (method, unit) cell is measured", "1", dtype="bool", fill=False),
}

# views of the table
VARIABLES: dict[str, tuple[str, ...]] = {name: v.dims for name, v in SCHEMA.items()}  # variable -> dims
VARIABLE_ATTRS: dict[str, tuple[str, str]] = {name: (v.long_name, v.units) for name, v in SCHEMA.items()}
ADDED_IN: dict[str, int] = {name: v.added_in for name, v in SCHEMA.items() if v.added_in > 1}
METRICS: tuple[str, ...] = tuple(name for name, v in SCHEMA.items() if v.is_metric)  # what a probed cell holds


def variables_for(version: int) -> dict[str, tuple[str, ...]]:
    """The per-unit variables a store of schema ``version`` holds."""
    return {k: v.dims for k, v in SCHEMA.items() if v.added_in <= version}


def cell_shape(name: str, sizes: Mapping[str, int]) -> tuple[int, ...]:
    """The shape of variable ``name`` for one (method, unit) cell, from the sizes of its other dims."""
    return tuple(int(sizes[d]) for d in SCHEMA[name].dims[2:])


def template(
    methods: Sequence[str],
    units: Sequence[str],
    layers: Sequence[int],
    kinds: Sequence[str],
    samples: int,
    steps: int,
    temperatures: Sequence[float],
    localities: Sequence[str] = DEFAULT_LOCALITIES,
    timings: Sequence[str] = TIMINGS,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """An all-fill dataset of the right shape (NaN, ``done`` all False, ``free_tokens`` all -1)."""
    import xarray as xr

    sizes = {
        "method": len(methods), "unit": len(units), "locality": len(localities), "timing": len(timings),
        "space": len(SPACES), "temperature": len(temperatures), "sample": samples, "step": steps,
    }
    data_vars = {}
    for name, var in SCHEMA.items():
        arr = np.full(tuple(sizes[d] for d in var.dims), var.fill, dtype=var.dtype)
        data_vars[name] = (var.dims, arr, {"long_name": var.long_name, "units": var.units})
    coords = {
        "method": list(methods), "unit": list(units), "layer": ("unit", np.asarray(layers, dtype=np.int64)),
        "kind": ("unit", list(kinds)), "locality": list(localities), "timing": list(timings), "space": list(SPACES),
        "temperature": np.asarray(temperatures, dtype=np.float64), "sample": np.arange(samples),
        "step": np.arange(steps),
    }
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update({"schema_version": SCHEMA_VERSION, "kl_convention": KL_CONVENTION})
    ds.attrs.update(attrs or {})
    return ds

"""The probe store's shape: dimensions, variables and attrs (schema version 2).

This module is the contract between the probe engine (writer), ranking, reports and the
TUI (readers). See docs/store.md for the meaning of every variable.

Version 2 added ``rel_par``, ``rel_perp``, ``dz_var_uniform``, ``dz_var_top5``,
``dz_var_top10``, ``dz_l1`` and ``dz_l2`` (``ADDED_IN``); version-1 stores still read
(``variables_for(1)`` is what they hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

SCHEMA_VERSION = 2
SPACES = ("embedding", "logit", "probability")
LOCALITIES = ("local", "propagated")  # the default pair
ALL_LOCALITIES = ("local", "propagated", "sublayer")  # sublayer: the unit's own residual-stream output (docs/probe.md)
TIMINGS = ("teacher_forced", "free_running")
KL_CONVENTION = "KL(p_dense || q_perturbed)"

# variable -> dims (in order). Every per-unit variable leads with (method, unit).
CELL = ("method", "unit", "locality", "timing")
VARIABLES: dict[str, tuple[str, ...]] = {
    "cos_dev": CELL + ("space", "temperature", "sample", "step"),  # measured 1-cos
    "cos_dev_pred": CELL + ("space", "temperature", "sample", "step"),  # Taylor prediction
    "rel_norm": CELL + ("space", "temperature", "sample", "step"),  # ||dx|| / ||x||
    "rel_par": CELL + ("space", "temperature", "sample", "step"),  # ||dx_parallel|| / ||x||
    "rel_perp": CELL + ("space", "temperature", "sample", "step"),  # ||dx_orthogonal|| / ||x||
    "kl": CELL + ("temperature", "sample", "step"),  # measured KL(p||q)
    "kl_pred": CELL + ("temperature", "sample", "step"),  # Var_p(dz) / (2 T^2)
    "top1_agree": CELL + ("sample", "step"),  # 1.0 / 0.0
    "dz_var_uniform": CELL + ("temperature", "sample", "step"),  # Var_uniform(dz) / (2 T^2)
    "dz_var_top5": CELL + ("temperature", "sample", "step"),  # Var of dz over the dense top-5, p renormalised, / (2 T^2)
    "dz_var_top10": CELL + ("temperature", "sample", "step"),
    "dz_l1": CELL + ("sample", "step"),  # mean |dz| over the vocabulary
    "dz_l2": CELL + ("sample", "step"),  # root mean square of dz
    "cand_kl": CELL + ("temperature", "sample", "step"),  # KL over renormalised candidates
    "cand_top1_agree": CELL + ("temperature", "sample", "step"),
    "cand_mass": CELL + ("temperature", "sample", "step"),  # candidates' mass in q
    "cand_rank": CELL + ("temperature", "sample", "step"),  # best candidate rank in q (0 = top)
    "free_tokens": ("method", "unit", "sample", "step"),  # tokens the perturbed model generated
    "done": ("method", "unit"),
}
FLOAT_VARS = tuple(k for k in VARIABLES if k not in ("free_tokens", "done"))
# variable -> (long_name, units) attrs (CF style: "1" = dimensionless); readers add them to older stores too
VARIABLE_ATTRS: dict[str, tuple[str, str]] = {
    "cos_dev": ("measured 1 - cos(x, x + dx) in the space", "1"),
    "cos_dev_pred": ("Taylor prediction of 1 - cos", "1"),
    "rel_norm": ("relative deviation norm ||dx|| / ||x||", "1"),
    "rel_par": ("relative deviation along x, ||dx_parallel|| / ||x||", "1"),
    "rel_perp": ("relative deviation orthogonal to x, ||dx_orthogonal|| / ||x||", "1"),
    "kl": ("measured KL(p_dense || q_perturbed) of the next-token distribution", "nat"),
    "kl_pred": ("predicted KL: Var_p(dz) / (2 T^2)", "nat"),
    "top1_agree": ("top-1 token of dense and perturbed agree (1.0 or 0.0)", "1"),
    "dz_var_uniform": ("Var_uniform(dz) / (2 T^2)", "nat"),
    "dz_var_top5": ("Var of dz over the dense top-5 (p renormalised) / (2 T^2)", "nat"),
    "dz_var_top10": ("Var of dz over the dense top-10 (p renormalised) / (2 T^2)", "nat"),
    "dz_l1": ("mean |dz| over the vocabulary", "logit"),
    "dz_l2": ("root mean square of dz over the vocabulary", "logit"),
    "cand_kl": ("KL over the renormalised answer candidates", "nat"),
    "cand_top1_agree": ("best candidate of dense and perturbed agree (1.0 or 0.0)", "1"),
    "cand_mass": ("probability mass of the candidates under q", "1"),
    "cand_rank": ("rank of the best candidate under q (0 = top)", "1"),
    "free_tokens": ("token ids the perturbed model generated (free-running; -1 = none)", "token id"),
    "done": ("the (method, unit) cell is measured", "1"),
}
ADDED_IN = {name: 2 for name in ("rel_par", "rel_perp", "dz_var_uniform", "dz_var_top5", "dz_var_top10", "dz_l1", "dz_l2")}


def variables_for(version: int) -> dict[str, tuple[str, ...]]:
    """The per-unit variables a store of schema ``version`` holds."""
    return {k: v for k, v in VARIABLES.items() if ADDED_IN.get(k, 1) <= version}
PER_UNIT_VARS = tuple(VARIABLES)


def template(
    methods: Sequence[str],
    units: Sequence[str],
    layers: Sequence[int],
    kinds: Sequence[str],
    samples: int,
    steps: int,
    temperatures: Sequence[float],
    localities: Sequence[str] = LOCALITIES,
    timings: Sequence[str] = TIMINGS,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """An all-NaN dataset of the right shape (``done`` all False, ``free_tokens`` all -1)."""
    sizes = {
        "method": len(methods), "unit": len(units), "locality": len(localities), "timing": len(timings),
        "space": len(SPACES), "temperature": len(temperatures), "sample": samples, "step": steps,
    }
    data_vars = {}
    for name, dims in VARIABLES.items():
        shape = tuple(sizes[d] for d in dims)
        if name == "done":
            arr = np.zeros(shape, dtype=bool)
        elif name == "free_tokens":
            arr = np.full(shape, -1, dtype=np.int64)
        else:
            arr = np.full(shape, np.nan, dtype=np.float32)
        long_name, unit_of_measure = VARIABLE_ATTRS[name]
        data_vars[name] = (dims, arr, {"long_name": long_name, "units": unit_of_measure})
    coords = {
        "method": list(methods), "unit": list(units), "layer": ("unit", np.asarray(layers, dtype=np.int64)),
        "kind": ("unit", list(kinds)), "locality": list(localities), "timing": list(timings), "space": list(SPACES),
        "temperature": np.asarray(temperatures, dtype=np.float64), "sample": np.arange(samples), "step": np.arange(steps),
    }
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update({"schema_version": SCHEMA_VERSION, "kl_convention": KL_CONVENTION})
    ds.attrs.update(attrs or {})
    return ds

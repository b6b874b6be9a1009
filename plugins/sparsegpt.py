"""SparseGPT: prune with Optimal Brain Surgeon updates of the remaining weights (Frantar & Alistarh 2023)."""

from __future__ import annotations

import torch

from prunelens.compression.methods import Param, WeightMethod
from prunelens.compression.obs_solver import OBS_PARAMS, obs_compress
from prunelens.compression.sparsity_masks import check_sparsity, parse_pattern
from prunelens.hookspecs import hookimpl


class SparseGPT(WeightMethod):
    name = "sparsegpt"
    llmcompressor_modifier = "SparseGPTModifier"  # plan --llmcompressor exports to it
    llmcompressor_family = "pruning"
    description = "SparseGPT: OBS pruning from the layer Hessian, blocks of columns, unstructured or N:M."
    calibration = "hessian"
    params = {
        "sparsity": Param(float, 0.5, "fraction of weights set to zero (per block of columns)", check_sparsity),
        "pattern": Param(str, None,
                         "N:M semi-structured pattern: keep N of every M inputs, e.g. 2:4 (overrides sparsity)",
                         check=lambda v: parse_pattern(v) and None),
        **OBS_PARAMS,
    }

    def compress_weight(self, weight: torch.Tensor, stats) -> torch.Tensor:
        nm = parse_pattern(self.pattern)
        return obs_compress(weight, stats.value, sparsity=0.0 if nm else self.sparsity, nm=nm,
                            blocksize=self.blocksize, percdamp=self.percdamp)


@hookimpl
def register_methods(register):
    register(SparseGPT)

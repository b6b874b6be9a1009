"""Magnitude pruning: zero the smallest |W| (per matrix, or N:M per row)."""

from __future__ import annotations

import torch

from prunelens.compression.methods import Param, WeightMethod
from prunelens.compression.sparsity_masks import check_sparsity, nm_mask, parse_pattern, topk_mask
from prunelens.hookspecs import hookimpl


class Magnitude(WeightMethod):
    name = "magnitude"
    description = "Zero the smallest-magnitude weights of every linear layer (whole matrix, or N:M per row)."
    calibration = "none"
    params = {
        "sparsity": Param(float, 0.5, "fraction of weights set to zero (unstructured)", check_sparsity),
        "pattern": Param(str, None, "N:M semi-structured pattern, e.g. 2:4 (overrides sparsity)",
                         check=lambda v: parse_pattern(v) and None),
    }

    def compress_weight(self, weight: torch.Tensor, stats=None) -> torch.Tensor:
        score = weight.abs()
        nm = parse_pattern(self.pattern)
        mask = nm_mask(score, *nm) if nm else topk_mask(score, self.sparsity)
        return weight * mask


@hookimpl
def register_methods(register):
    register(Magnitude)

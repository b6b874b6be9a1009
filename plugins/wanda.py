"""Wanda: prune by |W| · sqrt(S), S = mean squared input-column norm, compared within each output row."""

from __future__ import annotations

import torch

from prunelens.compression.methods import Param, WeightMethod
from prunelens.compression.sparsity_masks import check_sparsity, nm_mask, parse_pattern, topk_mask
from prunelens.hookspecs import hookimpl


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · sqrt(S_j)`` for W [out, in] and S [in]."""
    return weight.abs() * torch.sqrt(input_norms.float()).unsqueeze(0)


class Wanda(WeightMethod):
    name = "wanda"
    llmcompressor_modifier = "WandaPruningModifier"  # plan --llmcompressor exports to it
    llmcompressor_family = "pruning"
    description = "Wanda (Sun et al. 2023): zero the lowest |W|·‖X_j‖ in each output row (or N:M per row)."
    calibration = "input_norms"
    params = {
        "sparsity": Param(float, 0.5, "fraction of weights set to zero in each row (unstructured)", check_sparsity),
        "pattern": Param(str, None,
                         "N:M semi-structured pattern: keep N of every M inputs, e.g. 2:4 (overrides sparsity)",
                         check=lambda v: parse_pattern(v) and None),
    }

    def compress_weight(self, weight: torch.Tensor, stats) -> torch.Tensor:
        score = wanda_scores(weight, stats.value)
        nm = parse_pattern(self.pattern)
        mask = nm_mask(score, *nm) if nm else topk_mask(score, self.sparsity, dim=1)
        return weight * mask


@hookimpl
def register_methods(register):
    register(Wanda)

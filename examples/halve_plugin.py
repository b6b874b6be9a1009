"""A complete prunelens plugin in one file: a method that halves a unit's weights.

Use it:   prunelens --plugin examples/halve_plugin.py plugins
          prunelens --plugin examples/halve_plugin.py probe --method halve:factor=0.5 ...
"""

import torch

from prunelens.hookspecs import hookimpl
from prunelens.methods import Param, WeightMethod


class Halve(WeightMethod):
    """Scale every linear weight of the unit by ``factor``."""

    name = "halve"
    description = "Multiply every weight of a unit by a factor (a toy method)."
    unit_kinds = ("block", "attn", "mlp")
    calibration = "none"
    params = {"factor": Param(float, 0.5, "multiplier", check=lambda v: None if 0 <= v <= 1 else "must lie in [0, 1]")}

    def compress_weight(self, weight: torch.Tensor, stats=None) -> torch.Tensor:
        return weight * self.factor


@hookimpl
def register_methods(register):
    register(Halve)

"""RTN: round-to-nearest weight fake-quantization (per channel or per group of columns)."""

from __future__ import annotations

import torch

from prunelens.compression.methods import Param, WeightMethod
from prunelens.compression.quant_grid import Grid, check_bits, check_group_size
from prunelens.hookspecs import hookimpl

QUANT_PARAMS = {
    "bits": Param(int, 4, "bits per weight (2..8)", check_bits),
    "sym": Param(bool, False, "symmetric grid around zero (else asymmetric with a zero point)", flag="--sym/--asym"),
    "group_size": Param(int, 128, "columns sharing one scale; -1 = one scale per output channel", check_group_size),
}


class RTN(WeightMethod):
    name = "rtn"
    llmcompressor_modifier = "QuantizationModifier"  # plan --llmcompressor exports to it
    llmcompressor_family = "quantization"
    description = "Round-to-nearest weight fake-quant (2-8 bits, symmetric/asymmetric, per channel or per group)."
    calibration = "none"
    params = dict(QUANT_PARAMS)

    @property
    def grid(self) -> Grid:
        return Grid(self.bits, self.sym, self.group_size)

    def compress_weight(self, weight: torch.Tensor, stats=None) -> torch.Tensor:
        return self.grid.fake_quant(weight)


@hookimpl
def register_methods(register):
    register(RTN)

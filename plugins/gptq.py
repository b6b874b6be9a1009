"""GPTQ: quantize column by column, spreading each rounding error with the OBS update (Frantar et al. 2022)."""

from __future__ import annotations

import torch

from prunelens.compression.methods import WeightMethod
from prunelens.compression.obs_solver import OBS_PARAMS, obs_compress
from prunelens.compression.quant_grid import Grid
from prunelens.hookspecs import hookimpl
from prunelens_plugins.rtn import QUANT_PARAMS


class GPTQ(WeightMethod):
    name = "gptq"
    llmcompressor_modifier = "GPTQModifier"  # plan --llmcompressor exports to it
    llmcompressor_family = "quantization"
    description = "GPTQ: Hessian-aware quantization on the same grid as rtn (bits, sym, group_size)."
    calibration = "hessian"
    params = {**QUANT_PARAMS, **OBS_PARAMS}

    @property
    def grid(self) -> Grid:
        return Grid(self.bits, self.sym, self.group_size)

    def compress_weight(self, weight: torch.Tensor, stats) -> torch.Tensor:
        grid = self.grid
        gs = grid.group_size
        blocksize = self.blocksize
        state: dict[str, torch.Tensor] = {}
        if gs == -1:
            state["scale"], state["zero"] = grid.params(weight)
        else:
            blocksize = gs * max(1, blocksize // gs)  # a group never straddles two blocks

        def quantize(current: torch.Tensor, col: int) -> torch.Tensor:
            if gs != -1 and col % gs == 0:  # new group: grid from the OBS-updated weights
                state["scale"], state["zero"] = grid.params(current[:, :gs])
            return grid.quantize(current[:, :1], state["scale"], state["zero"]).squeeze(1)

        return obs_compress(weight, stats.value, quantize=quantize, blocksize=blocksize, percdamp=self.percdamp)


@hookimpl
def register_methods(register):
    register(GPTQ)

"""GPTQ: quantize column by column, spreading each rounding error with the OBS update (Frantar et al. 2022)."""

from __future__ import annotations

import torch

from prunelens.hookspecs import hookimpl
from prunelens.methods import Param, WeightMethod
from prunelens.obs import obs_compress
from prunelens.quantizer import Grid
from prunelens_plugins.rtn import QUANT_PARAMS


def _positive(v) -> str | None:
    return None if v > 0 else "must be positive"


class GPTQ(WeightMethod):
    name = "gptq"
    description = "GPTQ: Hessian-aware quantization on the same grid as rtn (bits, sym, group_size)."
    calibration = "hessian"
    params = dict(QUANT_PARAMS, **{
        "blocksize": Param(int, 128, "columns per OBS block (rounded to a multiple of group_size)", _positive),
        "percdamp": Param(float, 0.01, "Hessian damping as a fraction of mean(diag H)", _positive),
    })

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

"""The uniform weight-quantization grid shared by RTN and GPTQ (fake-quant, float out).

The grid follows the GPTQ reference: per row (and per group of columns), the range
``[min(x, 0), max(x, 0)]`` is cut into ``2**bits - 1`` steps of size ``scale``.
Symmetric grids use ``[-max|x|, max|x|]`` with ``zero = 2**(bits-1)``. Every value inside
the range is within ``scale / 2`` of its quantized value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelens.errors import PrunelensError


def check_bits(v: int) -> str | None:
    return None if 2 <= v <= 8 else "bits must lie in 2..8"


def check_group_size(v: int) -> str | None:
    return None if v == -1 or v > 0 else "group_size must be -1 (per channel) or a positive number of columns"


@dataclass(frozen=True)
class Grid:
    """Quantizer settings: ``bits``, symmetric or not, ``group_size`` columns (-1 = whole row)."""

    bits: int = 4
    sym: bool = False
    group_size: int = -1

    def __post_init__(self) -> None:
        for err in (check_bits(self.bits), check_group_size(self.group_size)):
            if err:
                raise PrunelensError(err)

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) per row of ``w`` [rows, cols], each shaped [rows, 1]."""
        xmin = torch.clamp(w.min(dim=1).values, max=0)
        xmax = torch.clamp(w.max(dim=1).values, min=0)
        if self.sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = -xmax  # (the GPTQ reference keeps xmin = 0 for all-positive rows and then clips half the range)
        flat = (xmin == 0) & (xmax == 0)
        xmin = torch.where(flat, torch.full_like(xmin, -1.0), xmin)
        xmax = torch.where(flat, torch.full_like(xmax, 1.0), xmax)
        scale = (xmax - xmin) / self.maxq
        if self.sym:
            zero = torch.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = torch.round(-xmin / scale)
        return scale.unsqueeze(1), zero.unsqueeze(1)

    def quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Round ``w`` onto the grid given by (scale, zero); returns dequantized floats."""
        q = torch.clamp(torch.round(w / scale) + zero, 0, self.maxq)
        return scale * (q - zero)

    def groups(self, cols: int) -> list[tuple[int, int]]:
        """Column ranges that share one (scale, zero)."""
        size = cols if self.group_size == -1 else self.group_size
        return [(c, min(c + size, cols)) for c in range(0, cols, size)]

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest of a whole [rows, cols] matrix, group by group."""
        out = torch.empty_like(w)
        for c0, c1 in self.groups(w.shape[1]):
            block = w[:, c0:c1]
            out[:, c0:c1] = self.quantize(block, *self.params(block))
        return out

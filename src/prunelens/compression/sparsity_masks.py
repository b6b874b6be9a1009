"""Sparsity masks shared by the pruning methods (True = keep)."""

from __future__ import annotations

import torch

from prunelens.errors import PrunelensError


def parse_pattern(text: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): keep N of every M consecutive inputs; None/"" -> unstructured."""
    if not text:
        return None
    try:
        n, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise PrunelensError(f"bad N:M pattern {text!r}: expected e.g. 2:4") from None
    if not 0 < n <= m:
        raise PrunelensError(f"bad N:M pattern {text!r}: need 0 < N <= M")
    return n, m


def check_sparsity(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "sparsity must lie in [0, 1)"


def topk_mask(scores: torch.Tensor, sparsity: float, dim: int | None = None) -> torch.Tensor:
    """Keep all but the ``int(n*sparsity)`` lowest scores, over the whole tensor or along ``dim``."""
    if dim is None:
        flat = scores.flatten()
        k = int(flat.numel() * sparsity)
        mask = torch.ones_like(flat, dtype=torch.bool)
        if k:
            mask[torch.topk(flat, k, largest=False).indices] = False
        return mask.view_as(scores)
    k = int(scores.shape[dim] * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(dim, torch.topk(scores, k, dim=dim, largest=False).indices, False)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N largest scores in every M consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise PrunelensError(f"N:M pattern {n}:{m} needs the input width ({cols}) to be a multiple of {m}")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(rows, cols)

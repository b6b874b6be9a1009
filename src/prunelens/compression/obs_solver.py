"""Optimal Brain Surgeon column sweep shared by SparseGPT and GPTQ.

Given a weight ``W`` [out, in] and the layer Hessian ``H = (2/N) Σ x xᵀ`` [in, in], columns
are processed left to right in blocks; each column is pruned and/or quantized and its error
is spread over the columns not yet processed through the upper Cholesky factor of ``H⁻¹``
(``W[:, i:] -= err ⊗ U[i, i:]`` with ``err = (w - q) / U[i, i]``), with a lazy update of the
rest of the matrix after each block (as in IST-DASLab/sparsegpt and gptq).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from prunelens.errors import PrunelensError
from prunelens.params import Param


def _positive(v) -> str | None:
    return None if v > 0 else "must be positive"


# The solver's own parameters, shared by every method built on obs_compress (sparsegpt, gptq).
OBS_PARAMS = {
    "blocksize": Param(int, 128, "columns per OBS block (gptq: rounded to a multiple of group_size)", _positive),
    "percdamp": Param(float, 0.01, "Hessian damping as a fraction of mean(diag H)", _positive),
}

# quantize(column_block_of_current_weights, global_column_index) hook: see obs_compress
Quantize = Callable[[torch.Tensor, int], torch.Tensor]
MAX_DAMP_RETRIES = 6


def inverse_hessian_cholesky(h: torch.Tensor, percdamp: float = 0.01, name: str = "") -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``H⁻¹ = Uᵀ U``), λ = percdamp · mean(diag H).

    On a non positive-definite matrix the damping is multiplied by 10 and retried, with a warning.
    ``h`` must already have its dead inputs fixed (see ``fix_dead_inputs``).
    """
    h = h.double() if h.dtype == torch.float64 else h.float()
    mean_diag = torch.mean(torch.diag(h))
    idx = torch.arange(h.shape[0], device=h.device)
    damp = percdamp
    for attempt in range(MAX_DAMP_RETRIES + 1):
        hd = h.clone()
        hd[idx, idx] += damp * mean_diag
        lower, info = torch.linalg.cholesky_ex(hd)
        if info.item() == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info.item() == 0 and torch.isfinite(upper).all():
                if attempt:
                    warnings.warn(
                        f"Hessian{' of ' + name if name else ''} is not positive definite with damping "
                        f"{percdamp:g}·mean(diag H); succeeded with {damp:g} (more damping: a less exact update)",
                        RuntimeWarning, stacklevel=3,
                    )
                return upper
        damp = max(damp, 1e-6) * 10
    raise PrunelensError(
        f"Hessian{' of ' + name if name else ''} is not positive definite even with damping "
        f"{damp / 10:g}·mean(diag H); use more calibration samples or a larger percdamp"
    )


def fix_dead_inputs(w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs never active in calibration (``diag(H) == 0``): ``H[d,d] = 1`` and ``W[:, d] = 0`` (copies)."""
    h = h.clone()
    w = w.clone(memory_format=torch.contiguous_format)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, h


def obs_compress(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    prune_mask: torch.Tensor | None = None,
    quantize: Quantize | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "",
) -> torch.Tensor:
    """Prune (unstructured ``sparsity``, ``nm`` = keep N of every M, or a given ``prune_mask``
    with True = prune) and/or quantize ``w`` [out, in] with OBS updates; returns a new float32 matrix.

    ``quantize(block, col)`` receives the current weights ``[out, k]`` starting at global column
    ``col`` and returns the quantized first column; it is called once per column (GPTQ).
    The column loop queues device work only (no ``.item()``, boolean indexing or other host sync).
    """
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise PrunelensError(f"Hessian shape {tuple(h.shape)} does not match weight inputs {cols}")
    w, h = fix_dead_inputs(w.float().contiguous(), h.float())
    u = inverse_hessian_cholesky(h, percdamp, name)
    if nm is not None:
        n_keep, m = nm
        if cols % m:
            raise PrunelensError(f"N:M pattern {n_keep}:{m} needs the input width ({cols}) to be a multiple of {m}")
        blocksize = max(m, blocksize // m * m)  # blocks never split an M-group
    out = torch.zeros_like(w)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diag(u1)
        if prune_mask is not None:
            mask1 = prune_mask[:, i1:i2].clone()
        else:
            mask1 = _unstructured_mask(w1, d1, sparsity if nm is None else 0.0)
        q1, err1 = _solve_block(w1, u1, d1, mask1, i1, nm, quantize)
        out[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return out


def _unstructured_mask(w1: torch.Tensor, d1: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A block's prune mask (True = prune): the ``sparsity`` fraction of lowest OBS scores ``w² / d²``; all
    False for no sparsity."""
    mask1 = torch.zeros_like(w1, dtype=torch.bool)
    if sparsity > 0:
        score = w1**2 / d1.unsqueeze(0) ** 2
        k = int(score.numel() * sparsity)
        if k:
            mask1.view(-1)[torch.topk(score.flatten(), k, largest=False).indices] = True
    return mask1


def _solve_block(w1: torch.Tensor, u1: torch.Tensor, d1: torch.Tensor, mask1: torch.Tensor, i1: int,
                 nm: tuple[int, int] | None, quantize: Quantize | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Visit a block's columns in order (block starting at global column ``i1``): choose each N:M group's pruned
    weights, prune and/or quantize the column and spread its error over the block's later columns (``w1`` and
    ``mask1`` are updated in place). Returns the block's new weights and its scaled errors."""
    q1 = torch.zeros_like(w1)
    err1 = torch.zeros_like(w1)
    for i in range(w1.shape[1]):
        col = w1[:, i]
        if nm is not None and i % nm[1] == 0:
            m = nm[1]
            score = w1[:, i : i + m] ** 2 / d1[i : i + m].unsqueeze(0) ** 2
            mask1.scatter_(1, i + torch.topk(score, m - nm[0], dim=1, largest=False).indices, True)
        q = torch.where(mask1[:, i], torch.zeros_like(col), col)  # no boolean indexing: no host sync per column
        if quantize is not None:
            qcol = quantize(w1[:, i:], i1 + i)
            q = torch.where(mask1[:, i], q, qcol)
        q1[:, i] = q
        e = (col - q) / u1[i, i]
        w1[:, i:] -= e.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
        err1[:, i] = e
    return q1, err1

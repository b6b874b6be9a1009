"""Built-in ranking strategies (lower score = safer to compress).

Store strategies read a probe store: ``kl_pred`` (predicted KL, the Taylor term
``Var_p(Δz)/(2T²)``) and ``kl`` (measured KL). Dense strategies run one dense pass over
calibration text and compare each unit's residual-stream input ``x_in`` with its output
``x_out`` (a block: its layer's input and output; an attention sublayer: the layer input and
the residual after attention, i.e. the layer run with its MLP zeroed; an MLP: that residual
and the layer output), in float32:

- ``block_influence`` (ShortGPT): ``1 − mean_t cos(x_in_t, x_out_t)``, row-wise cosine.
- ``angular`` (Gromov et al.): ``arccos(cos(x_in, x_out))/π`` on the last token (n = 1 unit).
- ``llm_drop`` (LLM-Drop): ``1 − cos(X, X + F(LN(X)))`` averaged over every token pooled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prunelens.compression.methods import Param
from prunelens.hookspecs import hookimpl
from prunelens.plan.ranking import RankContext, Ranker, resolve_method, store_means
from prunelens.units import Unit


class _StoreRanker(Ranker):
    needs = "store"
    variable = "kl_pred"

    def score(self, ctx: RankContext) -> dict[str, float]:
        if ctx.ds is None:
            from prunelens.errors import PrunelensError

            raise PrunelensError(f"ranker {self.name!r} needs a probe store")
        method = resolve_method(ctx.ds, ctx.method)
        means = store_means(ctx.ds, method=method, temperature=ctx.temperature, locality=ctx.locality,
                            timing=ctx.timing, units=ctx.units)
        return {u.name: float(v) for u, v in zip(ctx.units, means[self.variable])}


class PredictedKL(_StoreRanker):
    name = "kl_pred"
    description = "Predicted KL(p||q) = Var_p(Δz)/(2T²) from the probe store (propagated by default)."
    variable = "kl_pred"


class MeasuredKL(_StoreRanker):
    name = "kl"
    description = "Measured KL(p_dense||q_perturbed) from the probe store."
    variable = "kl"


# -- dense-pass strategies -------------------------------------------------------------
def _zero_output(_module, _args, out):
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]),) + tuple(out[1:])
    return torch.zeros_like(out)


@torch.no_grad()
def residual_pairs(adapter: Any, input_ids: torch.Tensor,
                   units: list[Unit]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """unit name -> (x_in, x_out) residual-stream states [batch, seq, d] from one dense pass."""
    calls, final = adapter.capture(input_ids)
    n = adapter.num_layers
    outs = [calls[i + 1].hidden if i + 1 < n else final for i in range(n)]
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mids: dict[int, torch.Tensor] = {}
    for u in units:
        i = u.layer
        if u.kind == "block":
            pairs[u.name] = (calls[i].hidden, outs[i])
            continue
        if i not in mids:
            handle = adapter.module(Unit(i, "mlp")).register_forward_hook(_zero_output)
            try:
                mids[i] = adapter.run_layer(i, calls[i].hidden, calls[i])
            finally:
                handle.remove()
        pairs[u.name] = (calls[i].hidden, mids[i]) if u.kind == "attn" else (mids[i], outs[i])
    return pairs


def row_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of matching rows (last dim), float32 — no T×T matrix."""
    a, b = a.float(), b.float()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def dense_ids(ctx: RankContext, samples: int, length: int, seed: int) -> torch.Tensor:
    from prunelens.text.corpora import token_windows

    if ctx.calib_ids is not None:
        return torch.as_tensor(ctx.calib_ids)
    loaded = ctx.model()
    return torch.as_tensor(token_windows(loaded.tokenizer, samples, length, split="calib", seed=seed))


class _DenseRanker(Ranker):
    needs = "dense"
    params = {
        "samples": Param(int, 8, "calibration windows"),
        "length": Param(int, 128, "tokens per window"),
        "seed": Param(int, 0, "window sampling seed"),
    }

    def score(self, ctx: RankContext) -> dict[str, float]:
        loaded = ctx.model()
        ids = dense_ids(ctx, self.values["samples"], self.values["length"], self.values["seed"])
        pairs = residual_pairs(loaded.adapter, ids.to(loaded.model.device), ctx.units)
        return {name: float(self.from_pair(x_in, x_out)) for name, (x_in, x_out) in pairs.items()}

    def from_pair(self, x_in: torch.Tensor, x_out: torch.Tensor) -> float:
        raise NotImplementedError


class BlockInfluence(_DenseRanker):
    name = "block_influence"
    description = "ShortGPT Block Influence 1 − mean_t cos(x_in, x_out) (per sample, then averaged)."

    def from_pair(self, x_in, x_out):
        return float((1.0 - row_cos(x_in, x_out).mean(dim=-1)).mean())


class Angular(_DenseRanker):
    name = "angular"
    description = "Angular distance arccos(cos(x_in, x_out))/π on the last token (Gromov et al., n = 1)."
    spans_blocks = True  # a plan of n blocks takes the n consecutive ones of least d(ℓ, n)

    def from_pair(self, x_in, x_out):
        c = row_cos(x_in[:, -1], x_out[:, -1]).clamp(-1.0, 1.0).double()
        return float((torch.arccos(c) / np.pi).mean())

    def consecutive_blocks(self, ctx: RankContext, n: int) -> list[str]:
        """Gromov et al.: the ``n`` consecutive blocks ``L{ℓ*}..L{ℓ*+n-1}`` with ``ℓ* = argmin_ℓ d(ℓ, n)``."""
        loaded = ctx.model()
        ids = dense_ids(ctx, self.values["samples"], self.values["length"], self.values["seed"])
        with torch.no_grad():
            d = angular_span(loaded.adapter, ids.to(loaded.model.device), n)
        start = min(range(len(d)), key=d.__getitem__)
        return [f"L{i}" for i in range(start, start + n)]


class LLMDrop(_DenseRanker):
    name = "llm_drop"
    description = "LLM-Drop 1 − cos(X, X + F(LN(X))) over all tokens, float32."

    def from_pair(self, x_in, x_out):
        return float(1.0 - row_cos(x_in, x_out).flatten().mean())


def angular_span(adapter: Any, input_ids: torch.Tensor, n: int) -> list[float]:
    """Gromov et al. ``d(ℓ, n) = arccos(cos(x_ℓ, x_{ℓ+n}))/π`` on the last token, for every start ℓ."""
    calls, final = adapter.capture(input_ids)
    states = [c.hidden for c in calls] + [final]
    out = []
    for ell in range(len(calls) - n + 1):
        c = row_cos(states[ell][:, -1], states[ell + n][:, -1]).clamp(-1.0, 1.0).double()
        out.append(float((torch.arccos(c) / np.pi).mean()))
    return out


@hookimpl
def register_rankers(register):
    for cls in (PredictedKL, MeasuredKL, BlockInfluence, Angular, LLMDrop):
        register(cls)

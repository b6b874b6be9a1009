"""Physically remove dropped sublayers from a loaded model (the prunelens loader for sublayer drops).

A prunelens checkpoint drops an attention or MLP sublayer by zeroing its output projection
(``o_proj``/``down_proj``...): plain ``transformers`` has no config field for "layer 7 has no
attention", so that is the only form it loads, and it still stores and computes the sublayer
(q/k/v/o, or gate/up/down) and caches the dropped attention's keys and values. A block drop is
different: the block is removed from the checkpoint and ``num_hidden_layers`` shrinks, which
plain transformers represents natively.

``slim_model`` replaces every sublayer whose output projection is exactly zero (weight and
bias) by a parameter-free module that returns zeros: the model's outputs are unchanged (a
sublayer feeding a zero projection contributes exactly zero to the residual stream), its
weights are freed, no time is spent on it, and a dropped attention keeps only a one-number
placeholder per cached token (so the cache's sequence length stays right) instead of its
keys and values. ``load_slim(path)`` = ``load_model`` + ``slim_model``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelens.units import Unit


class DroppedAttention(nn.Module):
    """Stands in for a dropped attention: returns zeros, caches a [batch, 1, seq, 1] placeholder."""

    def __init__(self, layer_idx: int | None):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))
        if cache is not None and hasattr(cache, "update") and self.layer_idx is not None:
            b, s = hidden_states.shape[:2]
            marker = hidden_states.new_zeros(b, 1, s, 1)  # keeps the cache's length, not its contents
            cache.update(marker, marker, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class DroppedMLP(nn.Module):
    """Stands in for a dropped MLP: returns zeros."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _is_dropped(sublayer: nn.Module) -> bool:
    from prunelens.compression.sequential import output_projection

    proj = output_projection(sublayer)
    bias = getattr(proj, "bias", None)
    return bool((proj.weight == 0).all()) and (bias is None or bool((bias == 0).all()))


def dropped_sublayers(adapter: Any) -> list[Unit]:
    """Attention and MLP sublayers whose output projection is exactly zero (dropped by prunelens)."""
    return [u for u in adapter.units(("attn", "mlp")) if _is_dropped(adapter.module(u))]


def slim_model(loaded: Any, units: list[Unit] | None = None) -> dict[str, Any]:
    """Replace dropped sublayers (default: every one with a zero output projection) in place.

    Returns the units removed and the parameters freed. Only architectures whose decoder layer
    calls ``self_attn(...)`` -> ``(out, weights)`` and ``mlp(x)`` -> ``out`` (Llama, Qwen2,
    Mistral, Gemma...) are handled; others raise ``PrunelensError``.
    """
    from prunelens.errors import PrunelensError

    adapter = loaded.adapter
    units = dropped_sublayers(adapter) if units is None else units
    freed = 0
    for u in units:
        if u.kind not in ("attn", "mlp"):
            raise PrunelensError(f"slim_model removes sublayers, not {u.kind} units ({u})")
        if adapter.spec.attn not in ("self_attn",) and u.kind == "attn":
            raise PrunelensError(f"cannot remove {u}: its attention ({adapter.spec.attn}) is not a self_attn module")
        old = adapter.module(u)
        freed += sum(p.numel() for p in old.parameters())
        new = DroppedAttention(getattr(old, "layer_idx", u.layer)) if u.kind == "attn" else DroppedMLP()
        setattr(adapter.layers[u.layer], getattr(adapter.spec, u.kind), new)
    return {"removed": [u.name for u in units], "params_freed": int(freed),
            "params_left": int(sum(p.numel() for p in adapter.model.parameters()))}


def load_slim(path: str, **load_kwargs: Any) -> Any:
    """Load a prunelens checkpoint with its dropped sublayers physically removed."""
    from prunelens.model.loading import load_model

    loaded: Any = load_model(path, **load_kwargs)  # a LoadedModel that also carries ``slim`` (what was removed)
    loaded.slim = slim_model(loaded)
    return loaded

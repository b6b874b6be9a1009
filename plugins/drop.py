"""Drop: remove a whole block, or one attention / MLP sublayer, so the residual passes through unchanged.

In ``perturb`` the unit is swapped for a module that returns zeros (a sublayer) or its input
(a block). A dropped attention (or block) still writes a placeholder of zeros into the
KV cache for its layer: ``DynamicCache.get_seq_length()`` reads layer 0, so a dropped
``L0.attn`` that left its cache empty would make generation restart positions at 0.
The placeholder is never read (nothing attends through a dropped attention).
For a whole model (``compress_model`` / ``prunelens compress``) see ``prunelens.compression.sequential.drop_units``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from prunelens.compression.methods import Method
from prunelens.hookspecs import hookimpl
from prunelens.model.adapters import Adapter
from prunelens.units import Unit


def _find_cache(args: tuple, kwargs: dict) -> Any:
    from transformers.cache_utils import Cache

    for v in list(args) + list(kwargs.values()):
        if isinstance(v, Cache):
            return getattr(v, "self_attention_cache", v)
    return None


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _CachePlaceholder(nn.Module):
    """Writes zero keys/values of the right shape for ``layer_idx`` when a cache is passed."""

    def __init__(self, config: Any, layer_idx: int | None):
        super().__init__()
        self.layer_idx = layer_idx
        heads = getattr(config, "num_attention_heads", None) or 1
        self.kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    def touch_cache(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> None:
        cache = _find_cache(args, kwargs)
        if cache is None or self.layer_idx is None:
            return
        b, s = hidden.shape[:2]
        kv = hidden.new_zeros(b, self.kv_heads, s, self.head_dim)
        skip = ("hidden_states", "cache", "past_key_values", "layer_past")
        extra = {k: v for k, v in kwargs.items() if k not in skip}
        cache.update(kv, kv.clone(), self.layer_idx, kwargs=extra)


class ZeroAttention(_CachePlaceholder):
    """Stands in for a dropped attention: returns ``(zeros, None)`` like transformers 5 attentions."""

    def forward(self, *args: Any, **kwargs: Any):
        hidden = _hidden(args, kwargs)
        self.touch_cache(hidden, args[1:], kwargs)
        return torch.zeros_like(hidden), None


class ZeroMLP(nn.Module):
    """Stands in for a dropped MLP: returns zeros shaped like its input."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden)


class IdentityBlock(_CachePlaceholder):
    """Stands in for a dropped decoder block: returns its input hidden state."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = _hidden(args, kwargs)
        self.touch_cache(hidden, args[1:], kwargs)
        return hidden


def attention_layer_idx(adapter: Adapter, layer: int) -> int | None:
    attn = adapter.module(Unit(layer, "attn"))
    idx = getattr(attn, "layer_idx", None)
    return layer if idx is None else idx


def replacement(adapter: Adapter, unit: Unit) -> nn.Module:
    """The module that stands in for a dropped ``unit``."""
    config = adapter.model.config
    if unit.kind == "mlp":
        return ZeroMLP()
    cls = ZeroAttention if unit.kind == "attn" else IdentityBlock
    return cls(config, attention_layer_idx(adapter, unit.layer))


class Drop(Method):
    name = "drop"
    description = "Remove a block or an attention/MLP sublayer (the residual stream passes through unchanged)."
    unit_kinds = ("block", "attn", "mlp")
    calibration = "none"
    params = {}
    removes_unit = True  # plans of drops map to kept layer ranges (mergekit) and remove parameters
    whole_model = True  # ``apply`` removes the units for good

    @contextmanager
    def perturb(self, adapter: Adapter, unit: Unit, stats: Mapping[str, Any] | None = None) -> Iterator[None]:
        self.check_unit(unit)
        with adapter.swapped(unit, replacement(adapter, unit)):
            yield

    def apply(self, loaded: Any, units: list[Unit], progress: bool = False) -> dict:
        """Whole-model form: drop ``units`` for good (see ``prunelens.compression.sequential.drop_units``)."""
        from prunelens.compression.sequential import drop_units

        return drop_units(loaded, units)


@hookimpl
def register_methods(register):
    register(Drop)

"""Architecture adapters: find a decoder's units, readout, and each layer's inputs.

An architecture is data (an ``ArchitectureSpec``) registered through the
``register_architectures`` hook; ``Adapter`` does the work for every spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import PrunelensError
from .units import KINDS, Unit, all_units


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where a family of decoders keeps its parts (dotted paths from the CausalLM)."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # e.g. "model.layers"
    attn: str  # attribute of one layer, e.g. "self_attn"
    mlp: str  # attribute of one layer, e.g. "mlp"
    final_norm: str  # e.g. "model.norm"
    lm_head: str = "lm_head"
    embed: str = "model.embed_tokens"


def _architecture_keys(spec: ArchitectureSpec) -> tuple[str, ...]:
    return tuple(spec.model_types)


def architecture_registry() -> dict[str, tuple[str, ArchitectureSpec]]:
    """model_type -> (plugin name, spec) from every plugin (cached until the plugins change)."""
    from .plugins import registry

    return registry("register_architectures", key=_architecture_keys)


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(root: nn.Module, path: str, value: Any) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, value)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A linear-like module's weight as [out_features, in_features] (GPT-2 Conv1D is transposed)."""
    w = module.weight
    return w.t() if type(module).__name__ == "Conv1D" else w


def set_linear_weight(module: nn.Module, w_out_in: torch.Tensor) -> None:
    """Write an [out, in] matrix into a linear-like module, keeping its dtype and layout."""
    w = w_out_in.t() if type(module).__name__ == "Conv1D" else w_out_in
    module.weight.data = w.to(dtype=module.weight.dtype, device=module.weight.device).contiguous()


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@dataclass
class LayerCall:
    """What one decoder layer received in the dense pass: run it again alone with ``Adapter.run_layer``."""

    hidden: torch.Tensor  # layer input hidden state [batch, seq, d]
    args: tuple
    kwargs: dict


class Adapter:
    """Uniform access to one loaded model through its ``ArchitectureSpec``."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec):
        self.model = model
        self.spec = spec
        self.layers: nn.ModuleList = _get(model, spec.layers)
        self.final_norm: nn.Module = _get(model, spec.final_norm)
        self.lm_head: nn.Module = _get(model, spec.lm_head)

    # -- units -----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def units(self, kinds=KINDS) -> list[Unit]:
        return all_units(self.num_layers, kinds)

    def _path(self, unit: Unit) -> str:
        if not 0 <= unit.layer < self.num_layers:
            raise PrunelensError(f"unit {unit} does not exist: the model has layers L0-L{self.num_layers - 1}")
        base = f"{self.spec.layers}.{unit.layer}"
        return base if unit.kind == "block" else f"{base}.{getattr(self.spec, unit.kind)}"

    def module(self, unit: Unit) -> nn.Module:
        return _get(self.model, self._path(unit))

    def module_name(self, unit: Unit) -> str:
        return self._path(unit)

    def linears(self, unit: Unit) -> dict[str, nn.Module]:
        """Linear-like submodules of a unit, by qualified name within the model."""
        base = self._path(unit)
        return {f"{base}.{n}" if n else base: m for n, m in self.module(unit).named_modules() if is_linear(m)}

    @contextmanager
    def swapped(self, unit: Unit, replacement: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put ``replacement`` where ``unit`` is; the original is restored on exit."""
        path = self._path(unit)
        original = _get(self.model, path)
        _set(self.model, path, replacement)
        try:
            yield original
        finally:
            _set(self.model, path, original)

    # -- readout ---------------------------------------------------------------
    def readout(self, hidden: torch.Tensor, mode: str = "norm") -> torch.Tensor:
        """Logits from a hidden state: ``norm`` = final norm then LM head (logit lens); ``raw`` = LM head only."""
        if mode not in ("norm", "raw"):
            raise PrunelensError(f"readout must be 'norm' or 'raw', not {mode!r}")
        h = self.final_norm(hidden) if mode == "norm" else hidden
        z = self.lm_head(h.to(self.lm_head.weight.dtype))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    # -- capture ---------------------------------------------------------------
    @torch.no_grad()
    def capture(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
    ) -> tuple[list[LayerCall], torch.Tensor]:
        """One dense forward; return every layer's call and the last layer's output (pre-norm)."""
        calls: list[LayerCall | None] = [None] * self.num_layers
        final: list[torch.Tensor] = []

        def pre_hook(i):
            def hook(_mod, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                calls[i] = LayerCall(hidden.detach(), tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})
            return hook

        def post_hook(_mod, _args, _kwargs, out):
            final.append(_first(out).detach())

        handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        handles.append(self.layers[-1].register_forward_hook(post_hook, with_kwargs=True))
        try:
            extra = {} if position_ids is None else {"position_ids": position_ids}
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
        finally:
            for h in handles:
                h.remove()
        return calls, final[-1]  # type: ignore[return-value]

    def run_layer(self, i: int, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """Run decoder layer ``i`` alone on ``hidden`` with the arguments it saw in the dense pass."""
        return _first(self.layers[i](hidden, *call.args, **call.kwargs))


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for a loaded causal LM, or a clear error naming the supported types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    reg = architecture_registry()
    if model_type not in reg:
        raise PrunelensError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(reg))} "
            "(add one with a register_architectures plugin)"
        )
    return Adapter(model, reg[model_type][1])

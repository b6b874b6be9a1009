"""Architecture adapters: find a decoder's units, readout, and each layer's inputs.

An architecture is data (an ``ArchitectureSpec``) registered through the
``register_architectures`` hook; ``Adapter`` does the work for every spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelens.errors import PrunelensError
from prunelens.units import KINDS, Unit, all_units


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
    from prunelens.plugins import registry

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
    """What one decoder layer received in a recorded pass: run it again alone with ``Adapter.run_layer``."""

    hidden: torch.Tensor  # layer input hidden state [batch, seq, d]
    args: tuple
    kwargs: dict


class _StopForward(Exception):
    """Raised by ``stop_before`` to end a forward pass early."""


@contextmanager
def stop_before(module: nn.Module) -> Iterator[None]:
    """End any forward pass when it reaches ``module`` (e.g. the final norm: no LM head, no logits)."""

    def hook(_mod: nn.Module, _args: tuple) -> None:
        raise _StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


def _pass_through(*args: Any, **kwargs: Any) -> torch.Tensor:
    """A decoder layer's stand-in forward: return the hidden state unchanged."""
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def _bypassed(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Each layer returns its input without computing (its hooks still fire); its own forward is restored on exit.

    The module stays in place, so a model loop that reads layer attributes (``attention_type``) still works;
    a forward patched by accelerate (an instance attribute) is put back as it was.
    """
    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = _pass_through
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


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

    # -- capture and replay: the one primitive every dense pass goes through ------------------------
    @torch.no_grad()
    def run_decoder(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> None:
        """One forward through the decoder layers, stopped at the final norm (no LM head); hooks see every layer."""
        extra = {} if position_ids is None else {"position_ids": position_ids}
        with stop_before(self.final_norm):
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)

    @contextmanager
    def watching(self, layers: Iterable[int], last_position: bool = False) -> Iterator[dict[int, list[torch.Tensor]]]:
        """While open, each call of layer ``i`` appends its output (``last_position``: only ``[:, -1]``) to
        ``seen[i]``."""
        seen: dict[int, list[torch.Tensor]] = {i: [] for i in layers}

        def hook(i: int) -> Callable[..., None]:
            def fn(_mod: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> None:
                h = _first(out)
                seen[i].append((h[:, -1] if last_position else h).detach())

            return fn

        handles = [self.layers[i].register_forward_hook(hook(i), with_kwargs=True) for i in seen]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def _record(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
        run_layers: bool,
    ) -> tuple[list[LayerCall], list[torch.Tensor]]:
        """Every layer's call in one decoder pass (``run_layers=False``: layers pass their input through)."""
        calls: list[LayerCall | None] = [None] * self.num_layers

        def pre_hook(i: int) -> Callable[..., None]:
            def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
                hidden = args[0] if args else kwargs["hidden_states"]
                rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                calls[i] = LayerCall(hidden.detach(), tuple(args[1:]), rest)

            return hook

        handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
                   for i, layer in enumerate(self.layers)]
        bypass = _bypassed(list(self.layers)) if not run_layers else nullcontext()
        try:
            with bypass, self.watching([self.num_layers - 1]) as seen:
                self.run_decoder(input_ids, attention_mask, position_ids)
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i, c in enumerate(calls) if c is None]
        if missing:
            raise PrunelensError(f"the forward pass never called decoder layer(s) {missing} of {self.num_layers}")
        return calls, seen[self.num_layers - 1]  # type: ignore[return-value]

    def capture(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[list[LayerCall], torch.Tensor]:
        """One dense forward; return every layer's call and the last layer's output (pre-norm)."""
        calls, outputs = self._record(input_ids, attention_mask, position_ids, run_layers=True)
        return calls, outputs[-1]

    def layer_calls(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> list[LayerCall]:
        """Every layer's call arguments without running any layer (each ``hidden`` is layer 0's input).

        For sequential work (whole-model compression): start from ``calls[0].hidden`` and feed each
        ``run_layer`` output to the next layer.
        """
        return self._record(input_ids, attention_mask, position_ids, run_layers=False)[0]

    def run_layer(self, i: int, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
        """Run decoder layer ``i`` alone on ``hidden`` with the arguments it saw in the recorded pass."""
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

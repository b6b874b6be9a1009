"""The dense pass, cached once: every layer's input and arguments over prompt + continuation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunelens.model.adapters import Adapter, LayerCall


def position_ids_for(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Positions that skip left padding (None when there is no padding)."""
    if mask is None:
        return None
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def capture_layers(
    adapter: Adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[list[LayerCall], torch.Tensor]:
    """One dense forward (``Adapter.capture`` with positions that skip left padding)."""
    return adapter.capture(input_ids, attention_mask, position_ids=position_ids_for(attention_mask))


@dataclass
class DenseBatch:
    """A batch of samples: prompt ids, the dense greedy continuation and the cached dense pass.

    ``steps`` positions ``prompt_width - 1 + s`` predict continuation token ``s``.
    """

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor | None  # [B, P] or None without padding
    continuation: torch.Tensor  # [B, S] dense greedy tokens
    calls: list[LayerCall]
    final: torch.Tensor  # [B, P + S - 1, d] last layer output (pre-norm)
    candidates: torch.Tensor | None  # [B, K] or None
    # (layer, [B * S, d] dense stream after its attention), one layer cached
    mid: tuple[int, torch.Tensor] | None = None
    free: dict = field(default_factory=dict)  # (layer, mid) -> [B * S, d] from the dense KV-cached decode

    @property
    def steps(self) -> int:
        return self.continuation.shape[1]

    @property
    def step_positions(self) -> torch.Tensor:
        p = self.prompt_ids.shape[1]
        return torch.arange(p - 1, p - 1 + self.steps, device=self.prompt_ids.device)

    def layer_output(self, i: int) -> torch.Tensor:
        """Dense output of layer ``i`` over the whole teacher-forced sequence."""
        return self.calls[i + 1].hidden if i + 1 < len(self.calls) else self.final

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, seq, d] -> [B * S, d]: the step positions, sample-major (a slice: no index tensor on another device)."""
        p = self.prompt_ids.shape[1]
        return x[:, p - 1 : p - 1 + self.steps].reshape(-1, x.shape[-1])

    def candidate_rows(self) -> torch.Tensor | None:
        if self.candidates is None:
            return None
        return self.candidates.repeat_interleave(self.steps, dim=0)


# -- the residual stream after attention (the ``sublayer`` locality of an attention unit) ----------
_MID_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")  # modules whose input is that stream


def mid_stream_module(adapter: Adapter, layer: int) -> torch.nn.Module:
    """The submodule of layer ``layer`` whose input is ``x + attn(x)``, the residual stream between attention and MLP.

    Pre-norm blocks (Llama, Qwen, Mistral, Phi-3, GPT-2): the MLP's input norm (Gemma-2/3: the
    pre-feed-forward norm, after its post-attention norm); post-norm blocks (OLMo-2): the MLP itself.
    Parallel-residual blocks (GPT-NeoX by default) have no such stream: refused with one line.
    """
    from prunelens.errors import PrunelensError

    config = adapter.model.config
    block = adapter.layers[layer]
    if getattr(config, "use_parallel_residual", False) or getattr(config, "parallel_attn", False):
        raise PrunelensError(f"{config.model_type}: attention and MLP run in parallel on the same input, so there is "
                             "no residual stream between them; the sublayer locality of an attention unit is undefined "
                             "(use local or propagated)")
    if getattr(config, "model_type", "") == "olmo2":
        return getattr(block, adapter.spec.mlp)
    for name in _MID_NORMS:
        mod = getattr(block, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise PrunelensError(f"{type(block).__name__}: cannot find the residual stream between attention and MLP "
                         f"(none of {', '.join(_MID_NORMS)}); the sublayer locality needs it")


class MidStream:
    """While open, records the input of ``mid_stream_module`` (all positions, or the last one per call)."""

    def __init__(self, adapter: Adapter, layer: int, last_only: bool = False):
        self.module = mid_stream_module(adapter, layer)
        self.last_only = last_only
        self.seen: list[torch.Tensor] = []
        self._handle = None

    def _hook(self, _mod, args, kwargs) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        self.seen.append((h[:, -1] if self.last_only else h).detach())

    def __enter__(self) -> MidStream:
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

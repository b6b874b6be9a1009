"""The dense pass, cached once: every layer's input and arguments over prompt + continuation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import Adapter, LayerCall


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
        """[B, seq, d] -> [B * S, d]: the step positions, sample-major."""
        return x[:, self.step_positions].reshape(-1, x.shape[-1])

    def candidate_rows(self) -> torch.Tensor | None:
        if self.candidates is None:
            return None
        return self.candidates.repeat_interleave(self.steps, dim=0)

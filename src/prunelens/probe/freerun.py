"""Greedy decoding with the model's own KV cache, watching chosen layers' last-position outputs.

Called inside a ``Method.perturb`` context, the perturbed model generates its own tokens and
every layer (a pruned attention included) reads a cache that it wrote itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..adapters import Adapter, _first
from .capture import position_ids_for


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, S]
    watched: dict[int, torch.Tensor]  # layer -> [B, S, d] output at the last position of each step


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older signature
        return DynamicCache()


@torch.no_grad()
def greedy_decode(
    adapter: Adapter,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    steps: int,
    watch: Sequence[int] = (),
) -> Decoded:
    """``steps`` greedy tokens after ``prompt_ids`` (left-padded, ``prompt_mask`` or None) with a KV cache.

    Step ``s`` is the prediction after the prompt and the first ``s`` generated tokens;
    ``watched[i][:, s]`` is layer ``i``'s output at that position.
    """
    model = adapter.model
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in watch}

    def hook(i: int):
        def fn(_mod, _args, _kwargs, out):
            seen[i].append(_first(out)[:, -1].detach())
        return fn

    handles = [adapter.layers[i].register_forward_hook(hook(i), with_kwargs=True) for i in seen]
    cache = _new_cache(model)
    ids, mask = prompt_ids, prompt_mask
    positions = position_ids_for(mask)
    tokens = []
    try:
        for s in range(steps):
            kwargs = {"cache": cache, "use_cache": True, "logits_to_keep": 1}
            if mask is not None:
                kwargs.update(attention_mask=mask, position_ids=positions if s == 0 else positions[:, -1:])
            out = model(input_ids=ids, **kwargs)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            ids = nxt
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    finally:
        for h in handles:
            h.remove()
    return Decoded(torch.cat(tokens, dim=1), {i: torch.stack(v, dim=1) for i, v in seen.items()})

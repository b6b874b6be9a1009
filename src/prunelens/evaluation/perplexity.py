"""Perplexity: exp of the mean token-level negative log-likelihood over fixed windows."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def mean_nll(loaded_or_model: Any, input_ids: Any, batch_size: int = 4) -> float:
    """Mean NLL (nats) of every token after the first in each window of ``input_ids`` [n, len]."""
    # a LoadedModel or an nn.Module
    model = loaded_or_model.model if hasattr(loaded_or_model, "adapter") else loaded_or_model
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    device = next(model.parameters()).device
    total = 0.0
    count = 0
    for s in range(0, ids.shape[0], batch_size):
        batch = ids[s : s + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1),
                              reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return total / count


def perplexity(loaded_or_model: Any, input_ids: Any, batch_size: int = 4) -> float:
    """``exp(mean NLL)`` over the windows; each window is scored independently (no context carry-over)."""
    return math.exp(mean_nll(loaded_or_model, input_ids, batch_size))

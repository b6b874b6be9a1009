"""Parameter counts by unique storage: a tied tensor (input embedding = LM head) counts once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _storage_key(t: Any) -> tuple:
    """Identity of the memory a tensor views: (storage pointer, offset, shape, stride); a meta tensor has no
    memory, so only the same Parameter object is the same tensor there."""
    if t.device.type == "meta":
        return ("meta", id(t))
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def unique_numel(tensors: Iterable[Any]) -> int:
    """Elements of ``tensors``, each distinct storage view counted once."""
    seen: set[tuple] = set()
    total = 0
    for t in tensors:
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            total += int(t.numel())
    return total


def module_param_count(module: Any) -> int:
    """Parameters of a module (including tied or shared ones only once)."""
    return unique_numel(p for _, p in module.named_parameters(remove_duplicate=False))


def meta_model(config: Any) -> Any:
    """A weightless model built from ``config`` with its tied weights tied (as loading would do)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    model.tie_weights()
    return model

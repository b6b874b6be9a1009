"""What a model is, read without loading its weights: its config, layer count and parameters per unit."""

from __future__ import annotations

from typing import Any

from prunelens.units import Unit


def model_config(model_id: str) -> Any:
    """The model's transformers config, without loading weights (``loading.read_config``)."""
    from prunelens.model.loading import read_config

    return read_config(model_id)


def num_layers_of(model_id: str | None) -> int | None:
    """The model's number of layers from its config (no weights loaded), or None when it cannot be read."""
    if not model_id:
        return None
    try:
        cfg = model_config(str(model_id))
    except Exception:  # noqa: BLE001 - callers skip their check; apply checks again with the real model
        return None
    n = getattr(cfg, "num_hidden_layers", None) or getattr(getattr(cfg, "text_config", None), "num_hidden_layers", None)
    return int(n) if n else None


def unit_param_counts(model_id: str, units: list[Unit], loaded: Any = None) -> tuple[dict[str, int], int]:
    """Parameters held by each unit and by the whole model (a meta model when not loaded: no weights read).

    Counted by unique storage (``paramcount``): tied input/output embeddings count once."""
    from prunelens.model.parameter_counts import meta_model, module_param_count

    if loaded is not None:
        model, adapter = loaded.model, loaded.adapter
    else:
        from prunelens.model.adapters import get_adapter

        model = meta_model(model_config(model_id))
        adapter = get_adapter(model)
    counts = {u.name: module_param_count(adapter.module(u)) for u in units}
    return counts, module_param_count(model)

"""Whole-model compression (sequential, layer by layer), block/sublayer dropping, checkpoints.

``compress_model`` follows the reference Wanda/SparseGPT order: calibration inputs enter
layer 0; for each layer the statistics of its linears are gathered on the inputs produced
by the already-compressed layers before it, the layer is compressed, and its compressed
outputs become the next layer's inputs. Only one layer's statistics exist at a time.

``drop_units`` removes whole blocks physically (renumbering ``layer_idx``, updating
``config.num_hidden_layers`` and ``config.layer_types``) and drops an attention or MLP
sublayer by zeroing its output projection (weight and bias): the sublayer then returns
exactly zero, so the residual passes through unchanged, and the checkpoint loads in plain
transformers with no custom code. (A dropped attention still computes and caches its K/V.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import Adapter, _get, _set, is_linear, linear_weight, set_linear_weight
from .calibration import run_decoder
from .errors import PrunelensError
from .methods import Method, WeightMethod
from .units import Unit


# -- layer inputs ---------------------------------------------------------------------------
@dataclass
class _Recorded:
    args: tuple
    kwargs: dict


class _Recorder(nn.Module):
    """Stands in for a decoder layer during capture: records its call and returns the input."""

    def __init__(self, sink: list):
        super().__init__()
        self.sink = sink

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.sink.append((hidden, _Recorded(tuple(args[1:]), kwargs)))
        return hidden


@torch.no_grad()
def capture_layer_calls(adapter: Adapter, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[_Recorded]]:
    """Layer 0's input hidden state and every layer's extra call arguments, without running any layer."""
    sink: list = []
    originals = list(adapter.layers)
    for i in range(len(originals)):
        adapter.layers[i] = _Recorder(sink)
    try:
        run_decoder(adapter, input_ids)
    finally:
        for i, layer in enumerate(originals):
            adapter.layers[i] = layer
    if len(sink) != len(originals):
        raise PrunelensError(f"captured {len(sink)} layer calls for {len(originals)} layers")
    return sink[0][0], [rec for _, rec in sink]


def _run(layer: nn.Module, hidden: torch.Tensor, rec: _Recorded) -> torch.Tensor:
    out = layer(hidden, *rec.args, **rec.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


# -- whole-model compression ------------------------------------------------------------------
def _default_calibration(loaded: Any, samples: int = 32, length: int = 256) -> torch.Tensor:
    from .data import token_windows

    return torch.as_tensor(token_windows(loaded.tokenizer, samples, length, split="calib"))


def _validate_units(adapter: Adapter, method: Method, units: list[Unit]) -> None:
    for u in units:
        method.check_unit(u)
        adapter.module(u)  # raises on a layer that does not exist


def _sparsity(mods: dict[str, nn.Module]) -> tuple[int, int]:
    zeros = total = 0
    for m in mods.values():
        w = m.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros, total


def compress_model(
    loaded: Any,
    method: Method,
    units: list[Unit] | None = None,
    calib_ids: torch.Tensor | None = None,
    progress: bool = True,
    batch_size: int = 8,
) -> dict:
    """Compress ``loaded.model`` in place with ``method`` on ``units`` (None = every block).

    Weight methods run sequentially layer by layer on calibration inputs propagated through
    the already-compressed layers; a method with an ``apply(loaded, units)`` (e.g. ``drop``)
    is delegated to it. Returns a summary: seconds, sparsity, per-layer info.
    """
    adapter: Adapter = loaded.adapter
    t0 = time.time()
    if not isinstance(method, WeightMethod):
        apply = getattr(method, "apply", None)
        if apply is None:
            raise PrunelensError(f"method {method.name!r} cannot compress a whole model (it has no apply())")
        if not units:
            raise PrunelensError(f"method {method.name!r} needs explicit units (e.g. --units L5,L7.attn)")
        _validate_units(adapter, method, units)
        summary = apply(loaded, units)
        return {"method": method.spec, "seconds": round(time.time() - t0, 3), **summary}

    if units is None:
        units = [Unit(i, "block") for i in range(adapter.num_layers)] if "block" in method.unit_kinds \
            else adapter.units(method.unit_kinds)
    if not units:
        raise PrunelensError("no units to compress")
    _validate_units(adapter, method, units)
    by_layer: dict[int, list[Unit]] = {}
    for u in units:
        by_layer.setdefault(u.layer, []).append(u)
    needs_stats = method.calibration != "none"
    if needs_stats and calib_ids is None:
        calib_ids = _default_calibration(loaded)

    from .calibration import StatsCollector, unit_linears

    layers_info: list[dict] = []
    zeros_all = total_all = 0
    hidden_batches: list[torch.Tensor] = []
    records: list[list[_Recorded]] = []
    if needs_stats:
        ids = torch.as_tensor(calib_ids)
        device = next(adapter.model.parameters()).device
        for s in range(0, ids.shape[0], batch_size):
            h, recs = capture_layer_calls(adapter, ids[s : s + batch_size].to(device))
            hidden_batches.append(h)
            records.append(recs)
    last = max(by_layer)
    layer_range = range(last + 1) if needs_stats else sorted(by_layer)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(layer_range), desc=f"compress {method.spec}", unit="layer")
    with torch.no_grad():
        for i in layer_range:
            tl = time.time()
            layer = adapter.layers[i]
            lin = unit_linears(adapter, by_layer.get(i, []))
            stats = None
            if lin and needs_stats:
                collector = StatsCollector(lin, method.calibration)
                with collector.attached():
                    for h, recs in zip(hidden_batches, records):
                        _run(layer, h, recs[i])
                stats = collector.stats
            for name, mod in lin.items():
                w = linear_weight(mod).detach().float()
                set_linear_weight(mod, method.compress_weight(w, None if stats is None else stats[name]))
            del stats
            if needs_stats and i < last:  # next layer's inputs come from this compressed layer
                hidden_batches = [_run(layer, h, recs[i]) for h, recs in zip(hidden_batches, records)]
            if lin:
                z, t = _sparsity(lin)
                zeros_all += z
                total_all += t
                layers_info.append({"layer": i, "units": [u.name for u in by_layer[i]], "linears": len(lin),
                                    "sparsity": z / t, "seconds": round(time.time() - tl, 3)})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "method": method.spec,
        "units": [u.name for u in units],
        "calibration_samples": 0 if calib_ids is None or not needs_stats else int(torch.as_tensor(calib_ids).shape[0]),
        "seconds": round(time.time() - t0, 3),
        "sparsity": zeros_all / total_all if total_all else 0.0,
        "layers": layers_info,
    }


# -- dropping -----------------------------------------------------------------------------------
def output_projection(sublayer: nn.Module) -> nn.Module:
    """The linear that writes a sublayer's output (its last registered linear: o_proj, down_proj, c_proj, dense...)."""
    linears = [m for _, m in sublayer.named_modules() if is_linear(m)]
    if not linears:
        raise PrunelensError(f"{type(sublayer).__name__} has no linear layer to zero")
    return linears[-1]


def drop_units(loaded: Any, units: list[Unit]) -> dict:
    """Drop blocks (removed) and attention/MLP sublayers (output projection zeroed) in place.

    A layer whose attention and MLP are both dropped is removed as a block.
    """
    adapter: Adapter = loaded.adapter
    model = adapter.model
    n = adapter.num_layers
    for u in units:
        adapter.module(u)
    kinds: dict[int, set[str]] = {}
    for u in units:
        kinds.setdefault(u.layer, set()).add(u.kind)
    blocks = sorted(i for i, k in kinds.items() if "block" in k or {"attn", "mlp"} <= k)
    subs = sorted(Unit(i, k) for i, ks in kinds.items() if i not in blocks for k in ks)
    if len(blocks) >= n:
        raise PrunelensError(f"cannot drop all {n} layers")
    with torch.no_grad():
        for u in subs:
            proj = output_projection(adapter.module(u))
            proj.weight.zero_()
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()
    if blocks:
        if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            raise PrunelensError("this model scales attention by 1/layer_idx; removing blocks would change the kept layers")
        keep = [i for i in range(n) if i not in blocks]
        new_layers = nn.ModuleList([adapter.layers[i] for i in keep])
        for new_idx, layer in enumerate(new_layers):
            for mod in layer.modules():
                if isinstance(getattr(mod, "layer_idx", None), int):
                    mod.layer_idx = new_idx
        _set(model, adapter.spec.layers, new_layers)
        adapter.layers = _get(model, adapter.spec.layers)
        cfg = model.config
        layer_types = getattr(cfg, "layer_types", None)
        if isinstance(layer_types, (list, tuple)) and len(layer_types) == n:
            cfg.layer_types = [layer_types[i] for i in keep]
        cfg.num_hidden_layers = len(keep)
        text_cfg = getattr(cfg, "text_config", None)
        if text_cfg is not None and getattr(text_cfg, "num_hidden_layers", None) == n:
            text_cfg.num_hidden_layers = len(keep)
    return {
        "dropped_blocks": [f"L{i}" for i in blocks],
        "dropped_sublayers": [u.name for u in subs],
        "layers_before": n,
        "layers_after": adapter.num_layers,
    }


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(loaded: Any, out_dir: str | Path, meta: dict, overwrite: bool = False, force: bool = False) -> Path:
    """Write safetensors + tokenizer + ``prunelens.json`` to ``out_dir`` atomically (temp dir, then rename).

    An existing ``out_dir`` is replaced only as ``prunelens.paths.guard_output_dir`` allows.
    """
    from . import __version__
    from .paths import CHECKPOINT_MARKER, guard_output_dir, remove_stale_temps, temp_prefix

    out = guard_output_dir(out_dir, overwrite=overwrite, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a checkpoint gets the usual mode
    old = None
    try:
        loaded.model.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        info = {
            "prunelens_version": __version__,
            "source_model": getattr(loaded, "model_id", None),
            "source_config_hash": getattr(loaded, "config_hash", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **meta,
        }
        info["files"] = sorted([p.name for p in tmp.iterdir()] + [CHECKPOINT_MARKER])
        (tmp / CHECKPOINT_MARKER).write_text(json.dumps(info, indent=2, default=str))
        from .fileio import follow_umask

        follow_umask(tmp)  # save_pretrained writes model.safetensors 0600
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(out, "old"), dir=out.parent))
            old.rmdir()
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

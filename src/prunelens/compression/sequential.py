"""Whole-model compression (sequential, layer by layer), block/sublayer dropping, checkpoints.

``compress_model`` follows the reference Wanda/SparseGPT order: calibration inputs enter
layer 0; for each layer the statistics of its linears are gathered on the inputs produced
by the already-compressed layers before it, the layer is compressed, and its compressed
outputs become the next layer's inputs. Only one layer's statistics exist at a time.
``layer_loop`` is that walk, shared with ``per_unit.compress_mixed`` (a method per unit) and with resuming
a killed run (``resume.LayerWork``).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunelens.compression.calibration import Stats, StatsCollector, unit_linears
from prunelens.compression.methods import Method, WeightMethod
from prunelens.errors import PrunelensError
from prunelens.model.adapters import Adapter, LayerCall, _get, _set, is_linear, linear_weight, set_linear_weight
from prunelens.units import Unit, covers_layer

if TYPE_CHECKING:
    from prunelens.compression.resume import LayerWork

LayerStep = Callable[[int], dict[str, nn.Module]]  # compress layer i; the modules it wrote, by name
LayerRestore = Callable[[int, Callable[[int], dict[str, torch.Tensor]]], None]  # (i, the saved tensors of a layer)


# -- whole-model compression ------------------------------------------------------------------
def _default_calibration(loaded: Any, samples: int = 32, length: int = 256) -> torch.Tensor:
    from prunelens.text.corpora import token_windows

    return torch.as_tensor(token_windows(loaded.tokenizer, samples, length, split="calib"))


@dataclass
class SequentialInputs:
    """Calibration batches walked through the decoder one layer at a time (the reference Wanda/SparseGPT order).

    ``hidden[b]`` is batch ``b``'s input to the current layer; ``calls[b][i]`` what layer ``i`` receives
    besides it (masks, positions), recorded once by ``Adapter.layer_calls``.
    """

    adapter: Adapter
    hidden: list[torch.Tensor]
    calls: list[list[LayerCall]]
    last_layer: int  # the last layer whose statistics are needed: its outputs feed nothing

    @classmethod
    def capture(cls, adapter: Adapter, ids: torch.Tensor, batch_size: int, last_layer: int) -> SequentialInputs:
        """Layer 0's inputs for ``ids`` [n, len] in batches of ``batch_size``, on the model's device."""
        device = next(adapter.model.parameters()).device
        calls = [adapter.layer_calls(ids[s : s + batch_size].to(device)) for s in range(0, ids.shape[0], batch_size)]
        return cls(adapter, [c[0].hidden for c in calls], calls, last_layer)

    @property
    def samples(self) -> int:
        return int(sum(h.shape[0] for h in self.hidden))

    def stats(self, i: int, linears: dict[str, nn.Module], kind: str) -> dict[str, Stats]:
        """Statistics of ``linears`` (inside layer ``i``) over every batch, running layer ``i`` as it is now."""
        collector = StatsCollector(linears, kind)
        with collector.attached():
            for h, calls in zip(self.hidden, self.calls):
                self.adapter.run_layer(i, h, calls[i])
        return collector.stats

    def advance(self, i: int) -> None:
        """Layer ``i``'s outputs (as the layer is now) become the inputs of layer ``i + 1``."""
        self.hidden = [self.adapter.run_layer(i, h, calls[i]) for h, calls in zip(self.hidden, self.calls)]


def _validate_units(adapter: Adapter, method: Method, units: list[Unit]) -> None:
    for u in units:
        method.check_unit(u)
        adapter.module(u)  # raises on a layer that does not exist


def zero_count(mods: dict[str, nn.Module]) -> tuple[int, int]:
    """(zero weights, all weights) over the given linear-like modules."""
    zeros = total = 0
    for m in mods.values():
        w = m.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros, total


def compress_linears(method: WeightMethod, linears: dict[str, nn.Module], stats: dict[str, Stats] | None) -> None:
    """Rewrite each linear's weight for good with ``method.compress_weight`` (``stats`` by linear name)."""
    for name, mod in linears.items():
        w = linear_weight(mod).detach().float()
        set_linear_weight(mod, method.compress_weight(w, None if stats is None else stats[name]))


def layer_loop(layers: Sequence[int], inputs: SequentialInputs | None, compress_layer: LayerStep,
               restore_layer: LayerRestore, info: list[dict], work: LayerWork | None = None,
               bar: Any = None) -> None:
    """The one layer-by-layer loop of ``compress`` and ``apply``.

    For each layer in order: ``compress_layer(i)`` rewrites it and returns the modules it wrote (by the names a
    resumed run restores them under); the layer's outputs, as compressed, become the next layer's calibration
    inputs (up to the last layer that needs them); with ``work`` the layer is kept on disk. A resumed run calls
    ``restore_layer(i, saved)`` for each finished layer instead, takes the rows of ``info`` and the next layer's
    inputs from disk, and continues (``info``, filled in place, holds every finished layer's rows)."""
    from prunelens.compression.resume import weights_of

    done = -1 if work is None else work.done
    if work is not None and done >= 0:
        for i in layers:
            if i <= done:
                restore_layer(i, work.layer)
        info[:] = work.info
    last_input = inputs.last_layer if inputs is not None else -1
    if work is not None and inputs is not None and done >= 0 and done < last_input:
        inputs.hidden = work.hidden(inputs.hidden[0].device)
    if bar is not None:
        bar.update(sum(i <= done for i in layers))
    with torch.no_grad():
        for i in layers:
            if i <= done:
                continue
            written = compress_layer(i)
            next_inputs = None
            if inputs is not None and i < last_input:
                inputs.advance(i)
                next_inputs = inputs.hidden
            if work is not None:
                work.save(i, weights_of(written), next_inputs, info)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def progress_bar(progress: bool, total: int, desc: str) -> Any:
    """A tqdm bar over layers, or None without ``progress``."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="layer")


def _compress_whole_model(loaded: Any, method: Method, units: list[Unit] | None, t0: float) -> dict:
    """A ``whole_model`` method (``drop``) compresses with its own ``apply(loaded, units)``."""
    if not method.whole_model:
        raise PrunelensError(f"method {method.name!r} cannot compress a whole model (it has no apply())")
    if not units:
        raise PrunelensError(f"method {method.name!r} needs explicit units (e.g. --units L5,L7.attn)")
    _validate_units(loaded.adapter, method, units)
    summary = method.apply(loaded, units)
    return {"method": method.spec, "seconds": round(time.time() - t0, 3), **summary}


def _weight_units(adapter: Adapter, method: WeightMethod, units: list[Unit] | None) -> list[Unit]:
    """The units a weight method compresses: those given (checked), or every block (every unit of its kinds)."""
    if units is None:
        units = [Unit(i, "block") for i in range(adapter.num_layers)] if "block" in method.unit_kinds \
            else adapter.units(method.unit_kinds)
    if not units:
        raise PrunelensError("no units to compress")
    _validate_units(adapter, method, units)
    return units


@dataclass
class _OneMethodPass:
    """The steps of ``layer_loop`` for one weight method on every chosen unit of a layer at once (the reference
    order: the layer's statistics gathered in one pass, then each linear rewritten), with zero counts."""

    adapter: Adapter
    method: WeightMethod
    by_layer: dict[int, list[Unit]]
    inputs: SequentialInputs | None
    zeros: int = 0
    weights: int = 0
    info: list[dict] = field(default_factory=list)

    def _count(self, lin: dict[str, nn.Module]) -> tuple[int, int]:
        z, n = zero_count(lin)
        self.zeros += z
        self.weights += n
        return z, n

    def restore(self, i: int, saved: Callable[[int], dict[str, torch.Tensor]]) -> None:
        from prunelens.compression.resume import restore_weights

        lin = unit_linears(self.adapter, self.by_layer.get(i, []))
        if lin:
            restore_weights(lin, saved(i))
            self._count(lin)

    def step(self, i: int) -> dict[str, nn.Module]:
        tl = time.time()
        lin = unit_linears(self.adapter, self.by_layer.get(i, []))
        stats = self.inputs.stats(i, lin, self.method.calibration) if lin and self.inputs is not None else None
        compress_linears(self.method, lin, stats)
        del stats
        if lin:
            z, n = self._count(lin)
            self.info.append({"layer": i, "units": [u.name for u in self.by_layer[i]], "linears": len(lin),
                              "sparsity": z / n, "seconds": round(time.time() - tl, 3)})
        return lin


def compress_model(
    loaded: Any,
    method: Method,
    units: list[Unit] | None = None,
    calib_ids: torch.Tensor | None = None,
    progress: bool = True,
    batch_size: int = 8,
    work: LayerWork | None = None,
) -> dict:
    """Compress ``loaded.model`` in place with ``method`` on ``units`` (None = every block).

    Weight methods run sequentially layer by layer on calibration inputs propagated through
    the already-compressed layers; a ``whole_model`` method (e.g. ``drop``) is delegated to its
    ``apply(loaded, units)``. Returns a summary: seconds, sparsity, per-layer info. With ``work``
    (weight methods), each finished layer is kept on disk and a rerun continues after the last one.
    """
    adapter: Adapter = loaded.adapter
    t0 = time.time()
    if not isinstance(method, WeightMethod):
        return _compress_whole_model(loaded, method, units, t0)
    units = _weight_units(adapter, method, units)
    by_layer: dict[int, list[Unit]] = {}
    for u in units:
        by_layer.setdefault(u.layer, []).append(u)
    needs_stats = method.calibration != "none"
    if needs_stats and calib_ids is None:
        calib_ids = _default_calibration(loaded)

    last = max(by_layer)
    inputs = SequentialInputs.capture(adapter, torch.as_tensor(calib_ids), batch_size, last) if needs_stats else None
    layers = range(last + 1) if needs_stats else sorted(by_layer)
    one = _OneMethodPass(adapter, method, by_layer, inputs)
    layer_loop(layers, inputs, one.step, one.restore, one.info, work,
               progress_bar(progress, len(layers), f"compress {method.spec}"))
    zeros_all, total_all = one.zeros, one.weights
    layers_info = one.info
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
    blocks = sorted(i for i, k in kinds.items() if covers_layer(k))
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
            raise PrunelensError("this model scales attention by 1/layer_idx; "
                                 "removing blocks would change the kept layers")
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
def drop_remote_code_refs(loaded: Any) -> None:
    """Forget the source's ``auto_map`` (config and tokenizer): a checkpoint holds none of that custom code, and
    prunelens never runs it (``trust_remote_code`` is off), so the saved files must not point at it."""
    config = getattr(loaded.model, "config", None)
    if config is not None and hasattr(config, "auto_map"):
        delattr(config, "auto_map")
    tok = getattr(loaded, "tokenizer", None)
    if tok is not None:
        getattr(tok, "init_kwargs", {}).pop("auto_map", None)
        if getattr(tok, "_auto_map", None) is not None:
            tok._auto_map = None


def save_checkpoint(loaded: Any, out_dir: str | Path, meta: dict, overwrite: bool = False, force: bool = False) -> Path:
    """Write safetensors + tokenizer + ``prunelens.json`` to ``out_dir`` atomically (temp dir, then rename).

    An existing ``out_dir`` is replaced only as ``prunelens.paths.guard_output_dir`` allows. The saved
    config and tokenizer config keep no ``auto_map`` (``drop_remote_code_refs``).
    """
    from prunelens import __version__
    from prunelens.paths import CHECKPOINT_MARKER, guard_output_dir, remove_stale_temps, temp_prefix

    out = guard_output_dir(out_dir, overwrite=overwrite, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a checkpoint gets the usual mode
    old = None
    try:
        drop_remote_code_refs(loaded)
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
        from prunelens.fileio import follow_umask

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

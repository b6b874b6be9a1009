"""Checkpoint: swap each unit's weights in from another checkpoint of the same architecture ("pruned mode").

``--method checkpoint:path=DIR`` answers "which layers of my already-compressed model hurt, and by
how much": DIR is a Hugging Face directory of safetensors (written by ``prunelens apply`` /
``compress``, by llm-compressor saved uncompressed, by the Wanda/SparseGPT reference code, or
dequantised from GGUF). While a cell is measured, every parameter and buffer of the unit is
replaced by DIR's tensor of the same name (cast to the model's dtype and device), the rest of the
model stays dense; on exit the originals come back.

A checkpoint of another architecture (model type, layer count, hidden size) or with a tensor of
another shape is refused with one line; so is a unit whose weights DIR does not hold (a unit that
was dropped there: probe it with ``--method drop``). Packed/compressed tensor formats are not read:
a tensor stored as integers (int8 codes, packed int4) where the model holds floats is refused too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from prunelens.compression.methods import Method, Param
from prunelens.errors import PrunelensError
from prunelens.fileio import read_json
from prunelens.hookspecs import hookimpl
from prunelens.model.adapters import Adapter
from prunelens.units import Unit

_ARCH_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size")


def _check_path(v: str) -> str | None:
    return None if v else "path must name a checkpoint directory"


@lru_cache(maxsize=4)
def tensor_index(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file of the checkpoint at ``path`` (all shards)."""
    from safetensors import safe_open

    d = Path(path)
    if not d.is_dir():
        raise PrunelensError(f"checkpoint:path={path}: not a directory")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise PrunelensError(f"checkpoint:path={path}: no *.safetensors files (only safetensors checkpoints are read)")
    out: dict[str, str] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                out.update({k: str(f) for k in fh.keys()})
        except Exception as exc:  # a truncated or foreign file: one line
            raise PrunelensError(f"checkpoint:path={path}: cannot read {f.name} ({exc})") from None
    return out


def read_tensors(path: str, names: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    index = tensor_index(path)
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(index[n], []).append(n)
    out = {}
    for f, keys in by_file.items():
        with safe_open(f, framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in keys})
    return out


def check_architecture(path: str, config: Any) -> None:
    """Refuse a checkpoint whose config.json describes another architecture than ``config``."""
    if not Path(path).is_dir():
        raise PrunelensError(f"checkpoint:path={path}: not a directory")
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise PrunelensError(f"checkpoint:path={path}: no config.json (cannot check it is the same architecture)")
    other = read_json(cfg_file, f"checkpoint:path={path}: config.json")
    nested = isinstance(other.get("text_config"), dict) and "num_hidden_layers" not in other
    text = other.get("text_config") if nested else None
    other = text or other
    mine = config.to_dict()
    diff = [f"{k} {other.get(k)} vs {mine.get(k)}" for k in _ARCH_KEYS
            if k in mine and k in other and other.get(k) != mine.get(k)]
    if diff:
        raise PrunelensError(f"checkpoint:path={path} is another architecture than the probed model "
                             f"({'; '.join(diff)} in the checkpoint vs the model)")


class Checkpoint(Method):
    name = "checkpoint"
    description = "Swap each unit's weights in from another checkpoint of the same architecture (pruned mode)."
    unit_kinds = ("block", "attn", "mlp")
    calibration = "none"
    params = {"path": Param(str, "", "directory of the compressed checkpoint (safetensors + config.json)", _check_path)}
    whole_model = True  # ``apply`` copies the units in for good

    def tensors_for(self, adapter: Adapter, unit: Unit) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Full name -> (the model's tensor, the checkpoint's tensor) for every parameter and buffer of ``unit``."""
        check_architecture(self.path, adapter.model.config)
        base = adapter.module_name(unit)
        mod = adapter.module(unit)
        own = {f"{base}.{n}": t for n, t in list(mod.named_parameters()) + list(mod.named_buffers())}
        index = tensor_index(self.path)
        missing = [n for n in own if n not in index]
        persistent = {f"{base}.{n}" for n, _ in mod.named_parameters()}
        if [n for n in missing if n in persistent]:
            raise PrunelensError(f"checkpoint:path={self.path} has no weights for {unit} (e.g. {missing[0]}): "
                                 "was it dropped there? probe it with --method drop")
        new = read_tensors(self.path, [n for n in own if n in index])
        out = {}
        for n, t in new.items():
            if tuple(t.shape) != tuple(own[n].shape):
                raise PrunelensError(f"checkpoint:path={self.path}: {n} has shape {tuple(t.shape)}, the model's is "
                                     f"{tuple(own[n].shape)} (another architecture or a packed format)")
            if t.dtype.is_floating_point != own[n].dtype.is_floating_point or t.dtype == torch.bool:
                # integers of the right shape are quantized codes (int8, packed): cast, they would read as weights
                raise PrunelensError(f"checkpoint:path={self.path}: {n} is stored as "
                                     f"{str(t.dtype).removeprefix('torch.')}, the model's is "
                                     f"{str(own[n].dtype).removeprefix('torch.')} (quantized or packed "
                                     "formats are not read: save the checkpoint dequantized)")
            out[n] = (own[n], t)
        return out

    @contextmanager
    def perturb(self, adapter: Adapter, unit: Unit, stats: Mapping[str, Any] | None = None) -> Iterator[None]:
        self.check_unit(unit)
        pairs = self.tensors_for(adapter, unit)
        saved = []
        try:
            with torch.no_grad():
                for mine, theirs in pairs.values():
                    saved.append((mine, mine.data))
                    mine.data = theirs.to(device=mine.device, dtype=mine.dtype)
            yield
        finally:
            for mine, data in reversed(saved):
                mine.data = data

    def apply(self, loaded: Any, units: list[Unit], progress: bool = False) -> dict:
        """Whole-model form: copy ``units`` from the checkpoint for good."""
        n = 0
        for u in units:
            for mine, theirs in self.tensors_for(loaded.adapter, u).values():
                mine.data = theirs.to(device=mine.device, dtype=mine.dtype)
                n += 1
        return {"units": [u.name for u in units], "tensors": n, "source": self.path}


@hookimpl
def register_methods(register):
    register(Checkpoint)

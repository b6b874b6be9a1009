"""Layer-by-layer work of ``compress`` and ``apply`` kept on disk, so that a killed run resumes exactly.

After each finished layer ``i`` the work folder receives the weights that layer's compression
wrote (``layer-i.safetensors``), the calibration activations entering layer ``i + 1``
(``hidden-i.safetensors``, sequential methods only) and then, atomically, ``state.json`` naming
``i`` as done. A rerun with the same inputs (``key``) restores layers ``0..i`` and those
activations and continues at ``i + 1``; every tensor is stored bit for bit, so the result equals
an uninterrupted run's. The folder sits next to the output and is removed once the checkpoint is
written; a folder that ``state.json`` does not mark as prunelens work is never written or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from prunelens.errors import PrunelensError
from prunelens.fileio import atomic_write

STATE = "state.json"
FORMAT = 1


def work_dir_for(out: str | Path) -> Path:
    """The work folder of output directory ``out``: ``NAME.partial`` beside it."""
    p = Path(out).expanduser().resolve()
    return p.parent / f"{p.name}.partial"


def tensor_digest(t: torch.Tensor) -> str:
    """A short content hash of a tensor (calibration ids), for the run's key."""
    a = t.detach().cpu().contiguous()
    return hashlib.sha256(str((a.dtype, tuple(a.shape))).encode() + a.numpy().tobytes()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=1, default=str))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file is a one-line error naming it
        raise PrunelensError(f"cannot read {path} ({type(exc).__name__}); delete {path.parent} to start over") from None


class LayerWork:
    """The on-disk progress of one layer-by-layer compression (see the module docstring)."""

    def __init__(self, path: Path, key: dict[str, Any], state: dict[str, Any]):
        self.path, self.key, self._state = path, key, state

    @classmethod
    def open(cls, path: str | Path, key: dict[str, Any]) -> LayerWork:
        """Start or continue the work of ``key`` in ``path``; a one-line error when ``path`` is another run's."""
        p = Path(path)
        key = json.loads(json.dumps(key, default=str))  # the form it has once read back
        state_file = p / STATE
        if p.is_dir() and state_file.is_file():
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = None
            if not isinstance(state, dict) or state.get("prunelens_work") != FORMAT:
                raise PrunelensError(f"{p} is not a prunelens work folder; move it away to compress into this --out")
            if state.get("key") != key:
                raise PrunelensError(f"{p} holds the partial work of a different run (other model, method, units or "
                                     "calibration); rerun that command to finish it, or delete the folder")
            return cls(p, key, state)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise PrunelensError(f"{p} exists and is not a prunelens work folder; move it away to write this --out")
        p.mkdir(parents=True, exist_ok=True)
        state = {"prunelens_work": FORMAT, "key": key, "done": -1, "info": []}
        _write_json(state_file, state)
        return cls(p, key, state)

    @property
    def done(self) -> int:
        """The last finished layer (-1: none)."""
        return int(self._state["done"])

    @property
    def info(self) -> list[dict]:
        """The per-layer (or per-unit) summary rows of the finished layers."""
        return list(self._state["info"])

    def layer(self, i: int) -> dict[str, torch.Tensor]:
        """The tensors saved for finished layer ``i``."""
        return _load_tensors(self.path / f"layer-{i}.safetensors")

    def hidden(self, device: torch.device | str) -> list[torch.Tensor]:
        """The calibration activations entering the layer after the last finished one, on ``device``."""
        saved = _load_tensors(self.path / f"hidden-{self.done}.safetensors")
        return [saved[f"b{k}"].to(device) for k in range(len(saved))]

    def save(self, i: int, tensors: dict[str, torch.Tensor], hidden: list[torch.Tensor] | None,
             info: list[dict]) -> None:
        """Record layer ``i`` as finished: its tensors, the next layer's inputs, then the state (last, atomic)."""
        _save_tensors(self.path / f"layer-{i}.safetensors", tensors)
        if hidden is not None:
            _save_tensors(self.path / f"hidden-{i}.safetensors", {f"b{k}": h for k, h in enumerate(hidden)})
        previous = self.done
        self._state = {**self._state, "done": i, "info": list(info)}
        _write_json(self.path / STATE, self._state)
        stale = self.path / f"hidden-{previous}.safetensors"
        if previous >= 0 and stale.exists():
            stale.unlink()

    @staticmethod
    def remove_at(path: str | Path) -> None:
        """Delete the work folder at ``path`` once its result is written; only a folder ``state.json`` marks as work."""
        p = Path(path)
        try:
            ours = json.loads((p / STATE).read_text(encoding="utf-8")).get("prunelens_work") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            shutil.rmtree(p, ignore_errors=True)


def restore_weights(modules: dict[str, torch.nn.Module], saved: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Copy saved weights (by ``prefix + name``) into the modules, bit for bit."""
    for name, mod in modules.items():
        t = saved.get(prefix + name)
        if t is None or t.shape != mod.weight.shape:
            raise PrunelensError(f"the work folder does not match the model ({prefix + name}); delete it to start over")
        mod.weight.data = t.to(dtype=mod.weight.dtype, device=mod.weight.device).contiguous()


def weights_of(modules: dict[str, torch.nn.Module], prefix: str = "") -> dict[str, torch.Tensor]:
    """The modules' weights by ``prefix + name`` (what ``restore_weights`` reads back)."""
    return {prefix + name: mod.weight for name, mod in modules.items()}

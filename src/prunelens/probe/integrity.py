"""A method may not leave the model changed: per-layer digests of the weights, taken once before a run's cells
and compared after each cell.

``perturb`` promises to restore every weight it touches (``prunelens.methods``). A plugin that breaks
the promise (zeroes another layer for good, restores a copy rounded differently) would silently change
every later cell, so a probe run checks: ``WeightGuard(model)`` records a digest per layer (plus one for
the embeddings, final norm and head), ``guard.check(method, unit)`` recomputes them and raises a one-line
``PrunelensError`` naming the method and the layers that changed.

Cost: one pass over the weights per check. On the CPU each tensor's bytes go through ``zlib.crc32``
(0.13 s for a 540 MB buffer alone; the whole check on SmolLM2-135M took 0.63 s on a busy 2-core machine,
1.4% of a 4-sample x 8-step cell there: ``bench/weight_guard.py`` prints both side by side); on an
accelerator each tensor is summed where it lives (its 32-bit words, plain and position-weighted, in
bounded chunks), so the weights never leave the device. Tensors on the meta device (offloaded) are
checked by shape and dtype only. This is a check against accidents, not against a hostile plugin (a
plugin runs arbitrary code anyway).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import torch

from ..errors import PrunelensError

OTHER = "embeddings/norm/head"
_CHUNK = 1 << 24  # words per step of an accelerator's checksum
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_of(name: str) -> str:
    """The group a state-dict entry belongs to: ``L<i>`` for a decoder layer's weights, else ``OTHER``."""
    m = _LAYER.search(name)
    return f"L{m.group(1)}" if m else OTHER


def tensor_digest(t: torch.Tensor) -> tuple[Any, ...]:
    """Shape, dtype and a checksum of the bytes (crc32 on the CPU, word sums on an accelerator, none on meta)."""
    head: tuple[Any, ...] = (tuple(t.shape), str(t.dtype))
    if t.device.type == "meta" or t.numel() == 0:
        return head
    flat = t.detach().contiguous().reshape(-1)
    if t.device.type == "cpu":
        return (*head, zlib.crc32(memoryview(flat.view(torch.uint8).numpy())))
    return (*head, *word_sums(flat))


def word_sums(flat: torch.Tensor) -> tuple[int, int]:
    """Σ w and Σ (i + 1)·w over the 32-bit words ``w`` of a contiguous 1-d tensor's bytes (bytes if their count is
    not a multiple of 4), in wrapping int64, computed where the tensor lives: one change or a swap of two words shows."""
    raw = flat.view(torch.uint8)
    words = raw.view(torch.int32) if raw.numel() % 4 == 0 else raw
    acc = torch.zeros(2, dtype=torch.int64, device=flat.device)  # int64 sums wrap: exact and order-free
    for lo in range(0, words.numel(), _CHUNK):  # bounded scratch memory (3 x 8 bytes per word of a chunk)
        x = words[lo:lo + _CHUNK].to(torch.int64)
        acc[0] += x.sum()
        acc[1] += (x * torch.arange(lo + 1, lo + 1 + x.numel(), device=x.device, dtype=torch.int64)).sum()
    s, w = acc.tolist()
    return int(s), int(w)


def layer_digests(model: torch.nn.Module) -> dict[str, list[tuple[Any, ...]]]:
    """Per group (``layer_of``), every tensor's name and ``tensor_digest`` (a tied tensor once)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    seen: set[tuple[str, int, int, int]] = set()
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            if not isinstance(t, torch.Tensor):
                continue
            t = t.detach()
            if t.device.type != "meta" and t.numel():
                key = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
                if key in seen:
                    continue
                seen.add(key)
            out.setdefault(layer_of(name), []).append((name, *tensor_digest(t)))
    return out


class WeightGuard:
    """The model's per-layer digests, taken once; ``check`` after a method's cell."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.digests = layer_digests(model)

    def changed(self) -> list[str]:
        """The groups whose weights differ from the recorded digests, in layer order."""
        now = layer_digests(self.model)
        groups = [g for g in set(now) | set(self.digests) if now.get(g) != self.digests.get(g)]
        return sorted(groups, key=lambda g: (g == OTHER, int(g[1:]) if g != OTHER else 0))

    def check(self, method: str, unit: str) -> None:
        """Raise a one-line ``PrunelensError`` naming ``method`` if the weights changed since the guard was made."""
        changed = self.changed()
        if changed:
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise PrunelensError(f"method {method!r} left the model's weights changed after its cell on {unit} "
                                 f"({shown}): its perturb must restore every weight it touches; the run stops and "
                                 "this cell is not recorded (the store stays incomplete)")

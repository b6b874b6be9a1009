"""A method may not leave the model changed: per-layer digests of the weights, taken once before a run's cells
and compared after each cell.

``perturb`` promises to restore every weight it touches (``prunelens.compression.methods``). A plugin that breaks
the promise (zeroes another layer for good, restores a copy rounded differently) would silently change
every later cell, so a probe run checks: ``WeightGuard(model)`` records a digest per layer (plus one for
the embeddings, final norm and head), ``guard.check(method, unit)`` recomputes them and raises a one-line
``PrunelensError`` naming the method and the layers that changed.

Cost. A full check is one pass over the weights (on the CPU each tensor's bytes through ``zlib.crc32``;
on an accelerator each tensor summed where it lives, its 32-bit words plain and position-weighted in
bounded chunks, so the weights never leave the device). That pass is as long as a small model's cell, so
it does not run after every cell: ``CellGate`` checks after each cell only the unit's own layer and any
layer whose tensors were replaced (a ``data_ptr`` scan), and runs the full check once the cells since the
last one took 20 times its cost (and at the end). Cells are marked done only after a full check passed,
so a damage anywhere leaves no cell done that ran after it; an interrupted run recomputes the unmarked
cells (at most about 5 % of its cell time). Tensors on the meta device (offloaded) are
checked by shape and dtype only. This is a check against accidents, not against a hostile plugin (a
plugin runs arbitrary code anyway).
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

from prunelens.errors import PrunelensError

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
    not a multiple of 4), in wrapping int64, computed where the tensor lives: one change or a swap of two words
    shows."""
    raw = flat.view(torch.uint8)
    words = raw.view(torch.int32) if raw.numel() % 4 == 0 else raw
    acc = torch.zeros(2, dtype=torch.int64, device=flat.device)  # int64 sums wrap: exact and order-free
    for lo in range(0, words.numel(), _CHUNK):  # bounded scratch memory (3 x 8 bytes per word of a chunk)
        x = words[lo:lo + _CHUNK].to(torch.int64)
        acc[0] += x.sum()
        acc[1] += (x * torch.arange(lo + 1, lo + 1 + x.numel(), device=x.device, dtype=torch.int64)).sum()
    s, w = acc.tolist()
    return int(s), int(w)


def layer_digests(model: torch.nn.Module, groups: Iterable[str] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Per group (``layer_of``), every tensor's name and ``tensor_digest`` (a tied tensor once); only ``groups``
    when given."""
    wanted = None if groups is None else set(groups)
    out: dict[str, list[tuple[Any, ...]]] = {}
    seen: set[tuple[str, int, int, int]] = set()
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            if not isinstance(t, torch.Tensor):
                continue
            t = t.detach()
            if wanted is not None and layer_of(name) not in wanted:
                continue
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
        t0 = time.perf_counter()
        self.digests = layer_digests(model)
        self.cost = time.perf_counter() - t0  # seconds of one full check
        self.identity = tensor_identity(model)

    def replaced(self) -> set[str]:
        """The groups holding a tensor that is not the one recorded (``p.data = ...``): cheap, no bytes read."""
        now = tensor_identity(self.model)
        return {layer_of(n) for n in set(now) | set(self.identity) if now.get(n) != self.identity.get(n)}

    def changed(self, groups: Iterable[str] | None = None) -> list[str]:
        """The groups (all, or ``groups``) whose weights differ from the recorded digests, in layer order."""
        wanted = None if groups is None else set(groups)
        now = layer_digests(self.model, wanted)
        before = self.digests if wanted is None else {g: d for g, d in self.digests.items() if g in wanted}
        changed = [g for g in set(now) | set(before) if now.get(g) != before.get(g)]
        return sorted(changed, key=lambda g: (g == OTHER, int(g[1:]) if g != OTHER else 0))

    def check(self, method: str, unit: str, groups: Iterable[str] | None = None) -> None:
        """Raise a one-line ``PrunelensError`` naming ``method`` if the weights (all, or ``groups``) changed since
        the guard was made."""
        changed = self.changed(groups)
        if changed:
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise PrunelensError(f"method {method!r} left the model's weights changed after its cell on {unit} "
                                 f"({shown}): its perturb must restore every weight it touches; the run stops and "
                                 "this cell is not recorded (the store stays incomplete)")


def tensor_identity(model: torch.nn.Module) -> dict[str, tuple[Any, ...]]:
    """Each state-dict tensor's storage, offset, shape and dtype: what ``p.data = other`` changes."""
    return {n: (t.device.type, t.untyped_storage().data_ptr() if t.device.type != "meta" else 0, t.storage_offset(),
                tuple(t.shape), t.dtype)
            for n, t in model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)}


class CellGate:
    """Checks a probe's cells and says which may be marked done.

    ``after_cell`` checks the unit's own layer and any replaced tensor's layer at once (cheap), queues the cell,
    and returns the cells a full check has just cleared (often none); ``flush`` runs the full check for the
    queued rest. A failed check raises and the queued cells stay unmarked."""

    SHARE = 0.05  # a full check costs at most this share of the cells' time ...
    ALWAYS = 0.05  # ... or runs after every cell when it takes less than this many seconds (small models)

    def __init__(self, guard: WeightGuard, mark: Callable[[list[Any]], None]):
        self.guard, self.mark = guard, mark
        self.pending: list[tuple[Any, str, str]] = []  # (cell, method, unit) since the last full check
        self.since = 0.0

    def after_cell(self, cell: Any, method: str, unit: str, layer: int, seconds: float) -> None:
        self.guard.check(method, unit, {f"L{layer}"} | self.guard.replaced())
        self.pending.append((cell, method, unit))
        self.since += seconds
        if self.guard.cost < self.ALWAYS or self.since * self.SHARE >= self.guard.cost:
            self.flush()

    def flush(self) -> None:
        """The full check; the queued cells are marked done when it passes."""
        if not self.pending:
            return
        methods = list(dict.fromkeys(m for _, m, _ in self.pending))
        units = list(dict.fromkeys(u for _, _, u in self.pending))
        self.guard.check(methods[0] if len(methods) == 1 else "one of " + ", ".join(methods),
                         units[0] if len(units) == 1 else f"one of {units[0]} .. {units[-1]}")
        self.mark([c for c, _, _ in self.pending])
        self.pending, self.since = [], 0.0

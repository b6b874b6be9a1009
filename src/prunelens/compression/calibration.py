"""Calibration statistics of linear-layer inputs, gathered with forward hooks.

Two kinds, both accumulated in float32 and normalised by the number of calibration
*sequences* N (as the reference Wanda and SparseGPT code do):

- ``input_norms`` (Wanda): ``S_j = (1/N) Σ_tokens x_j²`` as a running mean
  (``S *= n/(n+b); n += b; S += ||X_j||² / n`` for a batch of b sequences);
- ``hessian`` (SparseGPT, GPTQ): ``H = (2/N) Σ_tokens x xᵀ``.

Linears that read the very same input tensor (q/k/v; gate/up) share one statistic object.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelens.errors import unknown
from prunelens.units import Unit

STAT_KINDS = ("input_norms", "hessian")


@dataclass
class Stats:
    """Running statistic of one linear input: ``value`` is S [in] or H [in, in]."""

    kind: str
    value: torch.Tensor
    nsamples: int = 0
    shared_with: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, kind: str, width: int, device: torch.device | str = "cpu") -> Stats:
        shape = (width,) if kind == "input_norms" else (width, width)
        return cls(kind, torch.zeros(shape, dtype=torch.float32, device=device))

    def add(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Accumulate one batch of inputs ``x`` [batch, seq, in] (or [tokens, in] = one sequence)."""
        batch = x.shape[0] if x.dim() >= 3 else 1
        x = x.reshape(-1, x.shape[-1]).float()
        if mask is not None:
            x = x[mask.reshape(-1).bool()]
        self.value *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        if self.kind == "input_norms":
            self.value += (x * x).sum(dim=0) / self.nsamples
        else:
            x = x * (2.0 / self.nsamples) ** 0.5
            self.value += x.t() @ x


def _check_kind(kind: str) -> None:
    if kind not in STAT_KINDS:
        raise unknown("calibration kind", kind, STAT_KINDS)


class StatsCollector:
    """Forward pre-hooks on named linears that fill one ``Stats`` per distinct input."""

    def __init__(self, linears: Mapping[str, nn.Module], kind: str):
        _check_kind(kind)
        self.kind = kind
        self.linears = dict(linears)
        self.stats: dict[str, Stats] = {}
        self.mask: torch.Tensor | None = None  # token mask of the current batch (None = all tokens)
        self._last: tuple[Any, Stats] | None = None  # (input tensor, its stats) of the previous call
        self._owner: dict[str, bool] = {}

    def _hook(self, name: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            x = args[0]
            last = self._last
            if name not in self.stats:
                if last is not None and last[0] is x:  # same tensor as the previous linear: share
                    self.stats[name] = last[1]
                    last[1].shared_with.append(name)
                    self._owner[name] = False
                else:
                    self.stats[name] = Stats.empty(self.kind, x.shape[-1], x.device)
                    self._owner[name] = True
            st = self.stats[name]
            if self._owner[name]:
                st.add(x.detach(), self.mask)
            self._last = (x, st)

        return hook

    @contextmanager
    def attached(self) -> Iterator[StatsCollector]:
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.linears.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._last = None


def _adapter_of(loaded_or_adapter: Any):
    return getattr(loaded_or_adapter, "adapter", loaded_or_adapter)


def unit_linears(adapter: Any, units: list[Unit]) -> dict[str, nn.Module]:
    """Every linear of the given units, by qualified name (a block includes its sublayers')."""
    out: dict[str, nn.Module] = {}
    for u in units:
        out.update(adapter.linears(u))
    return out


@torch.no_grad()
def collect_stats(
    loaded_or_adapter: Any,
    units: list[Unit],
    kind: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Stats]:
    """One dense pass over ``input_ids`` [n, len] (``Adapter.run_decoder``); statistics of every linear of ``units``
    by name."""
    _check_kind(kind)
    adapter = _adapter_of(loaded_or_adapter)
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    device = next(adapter.model.parameters()).device
    collector = StatsCollector(unit_linears(adapter, units), kind)
    starts = range(0, input_ids.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"calibration ({kind})", unit="batch")
    with collector.attached():
        for s in starts:
            ids = input_ids[s : s + batch_size].to(device)
            mask = None if attention_mask is None else attention_mask[s : s + batch_size].to(device)
            collector.mask = mask
            adapter.run_decoder(ids, mask)
    return collector.stats


class LayerwiseStats:
    """Calibration statistics of one decoder layer at a time, on the model as it is (the dense model in a probe).

    The calibration batches are walked through the decoder layer by layer (``Adapter.layer_calls`` then
    ``Adapter.run_layer``): asking for layer ``i`` frees the statistics held for any other layer first, so at most
    one layer's statistics (all kinds asked for it) are alive. Asking for an earlier layer than the current one
    walks again from layer 0. The values equal ``collect_stats`` over the same batches bit for bit: each layer
    runs on the same inputs and arguments as in the whole-decoder pass.
    """

    def __init__(self, loaded_or_adapter: Any, units: list[Unit], input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, batch_size: int = 8):
        self.adapter = _adapter_of(loaded_or_adapter)
        ids = torch.as_tensor(input_ids)
        self.input_ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        self.attention_mask = attention_mask
        self.batch_size = batch_size
        self.units_by_layer: dict[int, list[Unit]] = {}
        for u in units:
            self.units_by_layer.setdefault(u.layer, []).append(u)
        self.layer: int | None = None  # the layer whose statistics are held
        self.held: dict[str, dict[str, Stats]] = {}  # kind -> linear name -> Stats, all of ``self.layer``
        self._at = -1  # the layer whose inputs ``_hidden`` holds (-1: not captured)
        self._hidden: list[torch.Tensor] = []
        self._calls: list[list[Any]] = []
        self._masks: list[torch.Tensor | None] = []

    def _capture(self) -> None:
        device = next(self.adapter.model.parameters()).device
        self._hidden, self._calls, self._masks = [], [], []
        for s in range(0, self.input_ids.shape[0], self.batch_size):
            ids = self.input_ids[s : s + self.batch_size].to(device)
            mask = None if self.attention_mask is None else self.attention_mask[s : s + self.batch_size].to(device)
            calls = self.adapter.layer_calls(ids, mask)
            self._calls.append(calls)
            self._hidden.append(calls[0].hidden)
            self._masks.append(mask)
        self._at = 0

    @torch.no_grad()
    def _walk_to(self, layer: int) -> None:
        if self._at < 0 or self._at > layer:
            self._capture()
        while self._at < layer:
            i = self._at
            self._hidden = [self.adapter.run_layer(i, h, calls[i]) for h, calls in zip(self._hidden, self._calls)]
            self._at = i + 1

    @torch.no_grad()
    def get(self, layer: int, kind: str) -> dict[str, Stats]:
        """Statistics of kind ``kind`` of every linear of the given units in ``layer`` (by qualified name)."""
        _check_kind(kind)
        if layer != self.layer:
            self.release()
            self.layer = layer
        if kind not in self.held:
            self._walk_to(layer)
            collector = StatsCollector(unit_linears(self.adapter, self.units_by_layer.get(layer, [])), kind)
            with collector.attached():
                for h, calls, mask in zip(self._hidden, self._calls, self._masks):
                    collector.mask = mask
                    self.adapter.run_layer(layer, h, calls[layer])
            self.held[kind] = collector.stats
        return self.held[kind]

    def release(self) -> None:
        """Free the statistics held (the walked inputs stay, for the next layer)."""
        self.held = {}
        self.layer = None

    def held_bytes(self) -> int:
        """Bytes of the statistics alive now (shared statistics counted once)."""
        seen = {id(st): st.value.numel() * st.value.element_size() for d in self.held.values() for st in d.values()}
        return sum(seen.values())

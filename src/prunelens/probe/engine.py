"""The probe engine: measure one (method, unit) cell on cached dense passes.

``ProbeEngine.prepare()`` makes, per batch of samples, the dense greedy continuation and one
dense forward over prompt + continuation that caches every layer's input (teacher-forced).
``measure(method, unit)`` then opens ``method.perturb`` and

* local, teacher-forced: re-runs only layer ``i`` on its cached input;
* sublayer, teacher-forced: the same run, read at the unit's own residual-stream output
  (``x + attn(x)`` for an attention unit, before the MLP; the layer output for an MLP or block);
* propagated, teacher-forced: continues through the dense layers ``i+1..L-1``;
* free-running: lets the perturbed model generate its own tokens with its own KV cache,
  watching layer ``i`` (local), its mid stream (sublayer) and the last layer (propagated) at
  each step's last position, against the dense model's own KV-cached decode of its greedy
  history (= the teacher-forced sequence; a change that does nothing compares exactly equal). With
  ``decode="sample"`` both decode by seeded sampling at ``decode_temperature`` (one shared noise stream,
  ``freerun.Sampler``).

Metrics (``metrics.row_metrics``) are computed on the step positions only, in float32/64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunelens.compression.methods import Method
from prunelens.errors import PrunelensError
from prunelens.model.adapters import Adapter
from prunelens.model.devices import is_out_of_memory, out_of_memory
from prunelens.model.offload import execution_device, onloaded
from prunelens.probe.capture import DenseBatch, MidStream, capture_layers
from prunelens.probe.distributed import Ranks
from prunelens.probe.freerun import Decoded, Sampler, greedy_decode
from prunelens.probe.metrics import RowMetrics, row_metrics
from prunelens.probe.prompts import Prompts
from prunelens.probe.vocab_pass import DenseRows, SumsKernel, kernel_key
from prunelens.units import Unit
from prunelens_store.schema import DEFAULT_LOCALITIES, LOCALITIES, METRICS, SPACES, TIMINGS, cell_shape

DECODES = ("greedy", "sample")
INNER_CACHE_BYTES = 256 << 20  # one inner layer's dense logits are cached only below this size


@dataclass
class ProbeSettings:
    """What to measure: steps, temperatures, localities, timings and the readout."""

    steps: int = 32
    temperatures: tuple[float, ...] = (1.0,)
    localities: tuple[str, ...] = DEFAULT_LOCALITIES
    timings: tuple[str, ...] = TIMINGS
    readout: str = "norm"
    batch_size: int = 16  # samples per batch
    compile: bool | None = None  # the compiled (kept, AOTInductor) metric kernel; None = auto (real vocabularies)
    decode: str = "greedy"  # how the dense continuation and free-running tokens are chosen: greedy | sample
    decode_temperature: float = 1.0  # sampling temperature (decode = sample)
    decode_seed: int = 0  # seed of the sampling noise, shared by dense and perturbed

    def __post_init__(self) -> None:
        self.temperatures = tuple(float(t) for t in self.temperatures)
        self.localities = tuple(self.localities)
        self.timings = tuple(self.timings)
        if self.steps < 1:
            raise PrunelensError("steps must be at least 1")
        if not self.temperatures or any(not (t > 0 and math.isfinite(t)) for t in self.temperatures):
            raise PrunelensError(f"temperatures must be positive finite numbers: {self.temperatures}")
        for name, vals, allowed in (("locality", self.localities, LOCALITIES), ("timing", self.timings, TIMINGS)):
            bad = [v for v in vals if v not in allowed]
            if bad or not vals or len(set(vals)) != len(vals):
                raise PrunelensError(f"{name} must be a list of distinct values from {', '.join(allowed)}; "
                                     f"got {', '.join(vals) or 'nothing'}")
        if self.readout not in ("norm", "raw"):
            raise PrunelensError(f"readout must be 'norm' or 'raw', not {self.readout!r}")
        if self.batch_size < 1:
            raise PrunelensError("batch size must be at least 1")
        if self.decode not in DECODES:
            raise PrunelensError(f"decode must be 'greedy' or 'sample', not {self.decode!r}")
        if not (self.decode_temperature > 0 and math.isfinite(self.decode_temperature)):
            raise PrunelensError("the sampling temperature must be a positive finite number, "
                                 f"not {self.decode_temperature}")

    @property
    def sampler(self) -> Sampler | None:
        """The shared seeded sampler, or None for greedy decoding."""
        return Sampler(float(self.decode_temperature), int(self.decode_seed)) if self.decode == "sample" else None


READOUT_CHUNK_BYTES = 64 << 20  # float32 LM-head rows cast per chunk in a low-precision readout


class Readout:
    """Logits in float32 (at least) from hidden states, whatever the model dtype.

    A low-precision head is read in chunks of vocabulary rows cast to float32 (at most
    ``READOUT_CHUNK_BYTES`` at a time, never a float32 copy of the whole head): products of
    bf16/fp16 values are exact in float32, so this equals a float32 matmul of the same values.
    The hidden rows are moved to the head's device explicitly; an offloaded head is onloaded
    for the call.
    """

    def __init__(self, adapter: Adapter, mode: str):
        self.adapter = adapter
        self.mode = mode
        w = adapter.lm_head.weight
        self.low_precision = w.dtype not in (torch.float32, torch.float64)
        self.cap = getattr(adapter.model.config, "final_logit_softcapping", None)
        self.device = execution_device(adapter.lm_head)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if not self.low_precision:
            return self.adapter.readout(h, self.mode).to(self.device)
        x = self.adapter.final_norm(h) if self.mode == "norm" else h
        x = x.to(self.device).float()
        head = self.adapter.lm_head
        with onloaded([head]):
            w = head.weight.detach()
            bias = getattr(head, "bias", None)
            step = max(1, READOUT_CHUNK_BYTES // (4 * w.shape[1]))
            z = torch.empty(x.shape[:-1] + (w.shape[0],), dtype=torch.float32, device=self.device)
            for lo in range(0, w.shape[0], step):
                hi = min(lo + step, w.shape[0])
                z[..., lo:hi] = F.linear(x, w[lo:hi].float(), None if bias is None else bias[lo:hi].float())
        return torch.tanh(z / self.cap) * self.cap if self.cap else z


@dataclass
class CellResult:
    """One (method, unit) cell: arrays shaped like the store's variables without (method, unit)."""

    arrays: dict[str, np.ndarray]
    free_tokens: np.ndarray  # [sample, step], -1 where not run
    nonfinite: int = 0


@dataclass
class ProbeEngine:
    """Measure cells for one model and one prompt set."""

    adapter: Adapter
    prompts: Prompts
    settings: ProbeSettings
    pad_id: int = 0
    batches: list[DenseBatch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.readout = Readout(self.adapter, self.settings.readout)
        # a bf16/fp16 model decodes from float32 logits of its last layer (its own logits are rounded and tie)
        self.decode_logits = Readout(self.adapter, "norm") if self.readout.low_precision else None
        self._dense_z: dict[tuple[int, int, bool, bool], DenseRows] = {}  # (batch, layer, mid, free)
        self._dense_layer: int | None = None
        self.compiled = self.settings.compile  # None = auto: compile when the measured eager cost would pay for it
        self.kernel = SumsKernel("auto" if self.compiled is None else ("compiled" if self.compiled else "eager"))

    @property
    def device(self) -> torch.device:
        """Where the model takes its input ids (the embedding's execution device)."""
        return execution_device(self.adapter.model.get_input_embeddings())

    @torch.no_grad()
    def prepare(self, progress: Callable[[int], Any] | None = None, ranks: Ranks | None = None) -> None:
        """Dense continuations and one cached dense pass per batch of samples.

        With several ``ranks`` each decodes its round-robin share of the batches (the same batches as one
        process, so the same tokens) and the continuations are exchanged; every rank then runs the cached
        dense pass of every batch itself (one forward each, cheap next to a decode of ``steps`` forwards).
        """
        ids, mask, padded = self.prompts.padded(self.pad_id)
        cands = self.prompts.candidate_array()
        steps, bs = self.settings.steps, self.settings.batch_size
        free = "free_running" in self.settings.timings
        starts = list(range(0, len(self.prompts), bs))
        ranks = ranks or Ranks()
        mine = ranks.shard(range(len(starts)))
        decoded: dict[int, Decoded] = {}
        error: Exception | None = None
        try:
            for b in mine:
                lo = starts[b]
                p_mask = mask[lo : lo + bs].to(self.device) if padded else None
                layers = list(range(self.adapter.num_layers)) if free else []
                decoded[b] = greedy_decode(self.adapter, ids[lo : lo + bs].to(self.device), p_mask, steps,
                                           watch=layers, mid=self._mid_layers() if free else (),
                                           sampler=self.settings.sampler, offset=lo, logits_fn=self.decode_logits)
                if progress and ranks.world == 1:
                    progress(len(decoded[b].tokens))
        except Exception as exc:  # tell the other ranks before raising (they would wait for this share)
            error = exc
        if ranks.world > 1:
            decoded = self._exchange(decoded, error, ranks)
        elif error is not None:
            raise error
        self.batches = []
        for b, lo in enumerate(starts):
            p_ids = ids[lo : lo + bs].to(self.device)
            p_mask = mask[lo : lo + bs].to(self.device) if padded else None
            dec = decoded[b]
            cont = dec.tokens
            seq = torch.cat([p_ids, cont[:, :-1]], dim=1)
            seq_mask = None if p_mask is None else torch.cat([p_mask, torch.ones_like(cont[:, :-1])], dim=1)
            calls, final = capture_layers(self.adapter, seq, seq_mask)
            cand = None if cands is None else torch.as_tensor(cands[lo : lo + bs], device=self.device)
            batch = DenseBatch(p_ids, p_mask, cont, calls, final, cand)
            if free:  # the dense model's own cached decode: the free-running reference (a no-op compares equal)
                batch.free = {(i, False): h.reshape(-1, h.shape[-1]) for i, h in dec.watched.items()}
                batch.free.update({(i, True): h.reshape(-1, h.shape[-1]) for i, h in dec.mid.items()})
            self.batches.append(batch)
            if progress and ranks.world > 1:
                progress(len(p_ids))

    def _exchange(self, decoded: dict[int, Decoded], error: Exception | None, ranks: Ranks) -> dict[int, Decoded]:
        """Every rank's decoded batches, on this device; raises on every rank if any rank failed."""
        def moved(d: Decoded, device: torch.device) -> Decoded:
            return Decoded(d.tokens.to(device), {k: v.to(device) for k, v in d.watched.items()},
                           {k: v.to(device) for k, v in d.mid.items()})

        cpu = torch.device("cpu")
        shares = ranks.all_gather_object({"error": f"{type(error).__name__}: {error}"} if error is not None
                                         else {b: moved(d, cpu) for b, d in decoded.items()})
        if error is not None:
            raise error
        failed = [(r, s["error"]) for r, s in enumerate(shares) if "error" in s]
        if failed:
            raise PrunelensError(f"rank {failed[0][0]} failed during the dense continuation: {failed[0][1]}")
        return {b: moved(d, self.device) for share in shares for b, d in share.items()}

    def _mid_layers(self) -> list[int]:
        """Layers whose mid stream (after attention) the sublayer locality reads; none if not requested or undefined."""
        if "sublayer" not in self.settings.localities:
            return []
        try:
            from prunelens.probe.capture import mid_stream_module

            mid_stream_module(self.adapter, 0)
        except PrunelensError:
            return []  # measure() raises the clear error for an attention unit
        return list(range(self.adapter.num_layers))

    # -- dense readouts, cached per layer ----------------------------------------
    def _dense_logits(self, b: int, layer: int) -> torch.Tensor:
        return self._dense_rows(b, layer).z

    def _dense_rows(self, b: int, layer: int, mid: bool = False, free: bool = False) -> DenseRows:
        """Dense logits of layer ``layer`` (``mid``: its mid stream; ``free``: the dense cached decode) on batch ``b``.

        The last layer's rows are cached for the whole run (every propagated cell reads them); one
        inner layer's rows are cached while its units are measured, unless they would take more
        than ``INNER_CACHE_BYTES`` (a long probe's [rows x vocab] logits: recomputing one LM-head
        projection per cell then costs less than holding them).
        """
        last = self.adapter.num_layers - 1
        if layer != last and layer != self._dense_layer:  # keep one inner layer's logits (+ the last layer's)
            self._dense_z = {k: v for k, v in self._dense_z.items() if k[1] == last and not k[2]}
            self._dense_layer = layer
        key = (b, layer, mid, free)
        if key in self._dense_z:
            return self._dense_z[key]
        rows = self.kernel.dense_rows(self.readout(self._dense_h(b, layer, mid, free)),
                                      list(self.settings.temperatures))
        if (layer == last and not mid) or self._inner_cache_fits():
            self._dense_z[key] = rows
        return rows

    def _inner_cache_fits(self) -> bool:
        """Whether one inner layer's dense logits (every batch and timing) fit in ``INNER_CACHE_BYTES``."""
        s = self.settings
        vocab = self.adapter.lm_head.weight.shape[0]
        return len(self.prompts) * s.steps * vocab * 4 * len(s.timings) <= INNER_CACHE_BYTES

    def _dense_h(self, b: int, layer: int, mid: bool = False, free: bool = False) -> torch.Tensor:
        """Dense hidden rows [B * S, d] of layer ``layer``'s output (``mid``: the stream after its attention).

        ``free``: as the dense model's own KV-cached decode saw them (the free-running reference).
        """
        batch = self.batches[b]
        if free:
            return batch.free[(layer, mid)]
        if not mid:
            return batch.rows(batch.layer_output(layer))
        if batch.mid is None or batch.mid[0] != layer:
            with MidStream(self.adapter, layer) as ms:
                self.adapter.run_layer(layer, batch.calls[layer].hidden, batch.calls[layer])
            batch.mid = (layer, batch.rows(ms.seen[-1]))
        return batch.mid[1]

    def expect_cells(self, cells: int) -> None:
        """Tell the metric kernel how many cells are to come (``auto`` compiles only if it pays)."""
        s = self.settings
        rows = len(self.prompts) * s.steps
        vocab = self.adapter.lm_head.weight.shape[0]
        self.kernel.expect(cells * rows * vocab * len(s.localities) * len(s.timings),
                           kernel_key(vocab, len(s.temperatures), torch.float32, self.device))

    def release(self) -> None:
        """Drop cached dense logits."""
        self._dense_z.clear()
        self._dense_layer = None

    # -- one cell --------------------------------------------------------------
    @torch.no_grad()
    def measure(self, method: Method, unit: Unit, stats: Mapping[str, Any] | None = None) -> CellResult:
        """All requested localities × timings for ``method`` applied to ``unit`` alone.

        The unit's layer is onloaded for the cell when accelerate offloads it (``offload.onloaded``), so a
        method's weight edit is what every forward of the cell sees. Out of memory becomes one
        ``OutOfMemory`` line naming the cell and what to lower.
        """
        method.check_unit(unit)
        try:
            with onloaded([self.adapter.layers[unit.layer]]):
                return self._measure(method, unit, stats)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory(f"in cell {method.spec} on {unit.name} ({self.device}, batch size "
                                f"{self.settings.batch_size})", exc) from None

    def _measure(self, method: Method, unit: Unit, stats: Mapping[str, Any] | None) -> CellResult:
        s = self.settings
        per: dict[tuple[str, str], list[RowMetrics]] = {}
        free: list[torch.Tensor] = []
        i, last = unit.layer, self.adapter.num_layers - 1
        mid = unit.kind == "attn"  # sublayer of an attention unit = the stream after it; else the layer output
        want_mid = mid and "sublayer" in s.localities
        for b, batch in enumerate(self.batches):
            cand = batch.candidate_rows()
            if "teacher_forced" in s.timings:
                ms = MidStream(self.adapter, i) if want_mid else None
                with method.perturb(self.adapter, unit, stats):
                    if ms is not None:
                        with ms:
                            x = self.adapter.run_layer(i, batch.calls[i].hidden, batch.calls[i])
                    else:
                        x = self.adapter.run_layer(i, batch.calls[i].hidden, batch.calls[i])
                if "local" in s.localities:
                    per.setdefault(("local", "teacher_forced"), []).append(
                        self._compare(batch, b, i, batch.rows(x), cand))
                if "sublayer" in s.localities:
                    h2 = batch.rows(ms.seen[-1]) if ms is not None else batch.rows(x)
                    per.setdefault(("sublayer", "teacher_forced"), []).append(
                        self._compare(batch, b, i, h2, cand, mid=mid))
                if "propagated" in s.localities:
                    for j in range(i + 1, self.adapter.num_layers):
                        x = self.adapter.run_layer(j, x, batch.calls[j])
                    per.setdefault(("propagated", "teacher_forced"), []).append(
                        self._compare(batch, b, last, batch.rows(x), cand))
                del x
            if "free_running" in s.timings:
                watch = sorted({last if loc == "propagated" else i for loc in s.localities})
                with method.perturb(self.adapter, unit, stats):
                    dec = greedy_decode(self.adapter, batch.prompt_ids, batch.prompt_mask, batch.steps, watch,
                                        mid=[i] if want_mid else (), sampler=s.sampler, offset=b * s.batch_size,
                                        logits_fn=self.decode_logits)
                free.append(dec.tokens)
                for loc in s.localities:
                    layer = last if loc == "propagated" else i
                    sub_mid = loc == "sublayer" and mid
                    seen = dec.mid[i] if sub_mid else dec.watched[layer]
                    h2 = seen.reshape(-1, seen.shape[-1])
                    per.setdefault((loc, "free_running"), []).append(
                        self._compare(batch, b, layer, h2, cand, mid=sub_mid, free=True))
        return self._assemble(per, free)

    def _compare(self, batch: DenseBatch, b: int, layer: int, h2: torch.Tensor, cand: torch.Tensor | None,
                 mid: bool = False, free: bool = False) -> RowMetrics:
        dense = self._dense_rows(b, layer, mid, free)
        z2 = self.readout(h2)
        h = self._dense_h(b, layer, mid, free)
        if h.dtype not in (torch.float32, torch.float64):  # bf16/fp16 model: differences in float32
            h = h.float()
        return row_metrics(h, h2.to(h.dtype) - h, dense.z, z2, list(self.settings.temperatures), cand, dense=dense,
                           kernel=self.kernel)

    def _assemble(self, per: dict[tuple[str, str], list[RowMetrics]], free: list[torch.Tensor]) -> CellResult:
        s = self.settings
        n, steps = len(self.prompts), s.steps
        sizes = {"locality": len(s.localities), "timing": len(s.timings), "space": len(SPACES),
                 "temperature": len(s.temperatures), "sample": n, "step": steps}
        arrays = {k: np.full(cell_shape(k, sizes), np.nan, dtype=np.float32) for k in METRICS}
        nonfinite = 0
        for (loc, tim), parts in per.items():
            m = RowMetrics.cat(parts)
            li, ti = s.localities.index(loc), s.timings.index(tim)
            for k in METRICS:
                v = getattr(m, k).cpu().numpy()
                arrays[k][li, ti] = v.reshape(v.shape[:-1] + (n, steps))
                if not k.startswith("cand_"):
                    nonfinite += int((~np.isfinite(v)).sum())
        tokens = torch.cat(free).cpu().numpy().astype(np.int64) if free else np.full((n, steps), -1, dtype=np.int64)
        return CellResult(arrays, tokens, nonfinite)

    def dense_tokens(self) -> np.ndarray:
        """[N, P + S] prompt (left-padded with -1) + dense continuation."""
        rows = []
        for batch in self.batches:
            p = batch.prompt_ids.clone()
            if batch.prompt_mask is not None:
                p[batch.prompt_mask == 0] = -1
            rows.append(torch.cat([p, batch.continuation], dim=1))
        return torch.cat(rows).cpu().numpy().astype(np.int64)

    def dense_continuation(self) -> np.ndarray:
        return torch.cat([b.continuation for b in self.batches]).cpu().numpy().astype(np.int64)

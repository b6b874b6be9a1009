"""The vocabulary pass: every vocab-sized row sum behind the logit- and probability-space metrics.

Per probed layer the dense side is summarised once (``DenseRows``: ``max z``, ``Σz²``, the
top-10 tokens and, per temperature, ``s = Σe`` and ``Σe²`` with ``e = exp((z - max z)/T)``)
and shared by every unit and method read at that layer. Per unit, one call walks the rows in
cache-sized chunks and, for all temperatures at once, returns the row sums in the input dtype:

* pass 1 (per T): ``Σ e Δz`` (→ ``μ = E_p[Δz]``), and ``Σ z Δz``, ``Σ Δz``, ``argmax z'``;
* pass 2 (per T): with ``b = (Δz - μ)/T``, ``ĥ = expm1(b) - b`` and ``g = b + ĥ``:
  ``Σeb, Σeĥ, Σeb², Σwb, Σwb², Σwg, Σwg², max b`` (``w = e²``), and once
  ``Σ Δz⊥², Σ (Δz - mean Δz)², Σ|Δz|, ΣΔz²``.

``ĥ`` is never taken as ``expm1(b) - b`` of a rounded ``expm1``: for ``|b| < 1/2`` it is a
degree-10 series (relative error < 1e-9), otherwise ``exp(b) - 1 - b``, so the compiled kernel
(whose ``expm1`` is ``exp - 1``) and eager agree with a float64 truth for every magnitude.

``SumsKernel`` runs the same function eagerly or through ``torch.compile`` (one fused loop nest
per chunk, padded to one shape); ``mode="auto"`` starts eager, times it, and compiles only when
the measured eager cost of the cells still to come exceeds the compile cost (recorded per
machine after the first compile; an estimate before that).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_BYTES = 1 << 20  # [rows x vocab] temporaries per chunk: about one L2 cache (CPU)
GPU_CHUNK_BYTES = 1 << 26  # on an accelerator: fewer, larger launches
TOPK = 10
SERIES_LIMIT = 0.5  # |b| below this: hb from the series
# 1/k! for k = 2..11: hb(b) = b² Σ_k b^(k-2)/k!
_INV_FACT = [1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040, 1 / 40320, 1 / 362880, 1 / 3628800, 1 / 39916800]
PER_T = ("eb", "eh", "ebb", "wb", "wbb", "wg", "wgg", "bmax")
ONCE = ("zdz", "dzsum", "perp_sq", "uvar", "l1", "dd", "argmax2")


def hb_of(b: torch.Tensor) -> torch.Tensor:
    """``expm1(b) - b`` accurate to float precision for every ``b`` (series for small |b|)."""
    acc = torch.full_like(b, _INV_FACT[-1])
    for c in reversed(_INV_FACT[:-1]):
        acc = acc * b + c
    series = acc * b * b
    direct = torch.exp(b) - 1 - b
    return torch.where(b.abs() < SERIES_LIMIT, series, direct)


def hb_of_eager(b: torch.Tensor) -> torch.Tensor:
    """``hb_of`` in few eager ops: float64's ``expm1`` is accurate for small arguments."""
    b64 = b.double()
    return (torch.expm1(b64) - b64).to(b.dtype)


def chunk_sums(z: torch.Tensor, z2: torch.Tensor, zmax: torch.Tensor, s: torch.Tensor, zz: torch.Tensor,
               inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums of one chunk: ``([len(PER_T), nT, rows], [len(ONCE), rows])`` in the input dtype.

    ``z``, ``z2`` [rows, V]; ``zmax``, ``zz`` [rows]; ``s`` [nT, rows]; ``inv_t`` [nT]. This is
    the function ``torch.compile`` fuses (``hb_of`` as a series); ``chunk_sums_eager`` is the
    same with fewer eager ops.
    """
    return _sums(z, z2, zmax, s, zz, inv_t, hb_of)


def chunk_sums_eager(z: torch.Tensor, z2: torch.Tensor, zmax: torch.Tensor, s: torch.Tensor, zz: torch.Tensor,
                     inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunk_sums`` for eager mode."""
    return _sums(z, z2, zmax, s, zz, inv_t, hb_of_eager)


def _sums(z, z2, zmax, s, zz, inv_t, hb: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    dot = torch.linalg.vecdot
    dz = z2 - z
    zs = z - zmax.unsqueeze(-1)
    zdz = dot(z, dz)
    coef = torch.where(zz > 0, zdz / zz, torch.zeros_like(zz))
    perp = dz - coef.unsqueeze(-1) * z
    dzsum = dz.sum(-1)
    dzc = dz - (dzsum / dz.shape[-1]).unsqueeze(-1)
    once = [zdz, dzsum, dot(perp, perp), dot(dzc, dzc), dz.abs().sum(-1), dot(dz, dz), z2.argmax(-1).to(z.dtype)]
    per_t = []
    for k in range(inv_t.shape[0]):
        it = inv_t[k]
        e = torch.exp(zs * it)
        mu = dot(e, dz) / s[k]
        b = (dz - mu.unsqueeze(-1)) * it
        h = hb(b)
        g = b + h
        w = e * e
        eb, wb, wg = e * b, w * b, w * g
        per_t.append(torch.stack([eb.sum(-1), dot(e, h), dot(eb, b), wb.sum(-1), dot(wb, b), wg.sum(-1), dot(wg, g),
                                  b.amax(-1)]))
    return torch.stack(per_t, 1), torch.stack(once)


@dataclass
class DenseRows:
    """Dense-side statistics of logit rows ``z`` [R, V], shared by every unit read at one layer."""

    z: torch.Tensor
    zmax: torch.Tensor  # [R]
    zz: torch.Tensor  # [R] Σz²
    top: torch.Tensor  # [R, TOPK] token ids by descending z
    argmax: torch.Tensor  # [R] z.argmax(-1)
    s: torch.Tensor  # [nT, R] Σe
    sw: torch.Tensor  # [nT, R] Σe²
    inv_t: torch.Tensor  # [nT]

    @classmethod
    def of(cls, z: torch.Tensor, temperatures: list[float]) -> DenseRows:
        z = z if z.dtype in (torch.float32, torch.float64) else z.float()
        zmax = z.amax(-1)
        inv_t = torch.tensor([1.0 / t for t in temperatures], dtype=z.dtype, device=z.device)
        s, sw = [], []
        for lo, hi in _chunks(z.shape[0], z.shape[1], z.element_size(), z.device):
            zs = z[lo:hi] - zmax[lo:hi].unsqueeze(-1)
            s_c, sw_c = [], []
            for it in inv_t:
                e = torch.exp(zs * it)
                s_c.append(e.sum(-1))
                sw_c.append(torch.linalg.vecdot(e, e))
            s.append(torch.stack(s_c))
            sw.append(torch.stack(sw_c))
        top = z.topk(min(TOPK, z.shape[1]), dim=-1).indices
        return cls(z, zmax, torch.linalg.vecdot(z, z), top, z.argmax(-1), torch.cat(s, 1), torch.cat(sw, 1), inv_t)


def _chunks(rows: int, vocab: int, itemsize: int, device: torch.device | None = None) -> list[tuple[int, int]]:
    budget = CACHE_BYTES if device is None or device.type == "cpu" else GPU_CHUNK_BYTES
    step = max(1, budget // max(1, vocab * itemsize))
    return [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]


class SumsKernel:
    """``chunk_sums`` over all rows, eager or compiled.

    ``mode``: ``eager``; ``compiled`` (compile on the first call); ``auto``: eager until
    ``expect`` has announced enough work that the measured eager time still to come exceeds
    the compile time (the time this machine last needed, recorded after a compile, or
    ``DEFAULT_COMPILE_SECONDS``) plus the compiled time; short runs never compile.
    """

    def __init__(self, mode: str = "auto"):
        if mode not in ("eager", "compiled", "auto"):
            raise ValueError(f"kernel mode must be eager, compiled or auto, not {mode!r}")
        self.mode = mode
        self._compiled: Any = None  # None: not yet; False: failed, eager for good
        self.remaining = 0  # vocab elements still expected (auto mode)
        self.timing: dict[str, Any] = {"eager_s": 0.0, "eager_elems": 0, "compiled_s": 0.0, "compiled_elems": 0,
                                       "first_compiled_s": None, "first_compiled_elems": 0}
        self.key = ""

    @property
    def using_compiled(self) -> bool:
        return self._compiled not in (None, False)

    def expect(self, elements: int, key: str = "") -> None:
        """Announce ``elements`` more vocab elements (rows × vocab) to come; ``key`` names the shape/machine."""
        self.remaining = int(elements)
        self.key = key or self.key

    def __call__(self, dense: DenseRows, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums for all rows: ``([len(PER_T), nT, R], [len(ONCE), R])``."""
        z = dense.z
        z2 = z2.to(z.dtype)
        rows, vocab = z.shape
        self._decide()
        compiled = self.using_compiled or (self.mode == "compiled" and self._compiled is None)
        t0 = time.perf_counter()
        try:
            out = self._run(dense, z2, compiled)
        except Exception as exc:  # no compiler, unsupported backend: stay correct, just slower
            if not compiled:
                raise
            warnings.warn(f"torch.compile of the probe metrics failed ({type(exc).__name__}); using eager mode", stacklevel=2)
            self._compiled = False
            compiled = False
            t0 = time.perf_counter()
            out = self._run(dense, z2, False)
        dt = time.perf_counter() - t0
        t = self.timing
        if not compiled:
            t["eager_s"] += dt
            t["eager_elems"] += rows * vocab
        elif t["first_compiled_s"] is None:
            t["first_compiled_s"], t["first_compiled_elems"] = dt, rows * vocab  # includes the compile
        else:
            t["compiled_s"] += dt
            t["compiled_elems"] += rows * vocab
            if t["compiled_elems"] == rows * vocab:
                self._record()
        self.remaining = max(0, self.remaining - rows * vocab)
        return out

    def _run(self, dense: DenseRows, z2: torch.Tensor, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        z = dense.z
        spans = _chunks(z.shape[0], z.shape[1], z.element_size(), z.device)
        step = min(spans[0][1] - spans[0][0], 1 << (z.shape[0] - 1).bit_length())  # few shapes: powers of two
        if compiled and self._compiled is None:
            self._compiled = compiled_sums()
        fn = self._compiled if compiled else chunk_sums_eager
        per, once = [], []
        for lo, hi in spans:
            args = (z[lo:hi], z2[lo:hi], dense.zmax[lo:hi], dense.s[:, lo:hi], dense.zz[lo:hi], dense.inv_t)
            if compiled and hi - lo < step:  # one kernel shape: pad the last chunk
                args = _pad(args, step - (hi - lo))
            p, o = fn(*args)
            per.append(p[..., : hi - lo])
            once.append(o[..., : hi - lo])
        return torch.cat(per, -1), torch.cat(once, -1)

    def _decide(self) -> None:
        """Auto mode: compile once the eager time still to come would exceed compile + compiled time."""
        t = self.timing
        if self.mode != "auto" or self._compiled is not None or not t["eager_elems"] or not self.remaining:
            return
        rec = _records().get(self.key, {})
        eager_rate = t["eager_s"] / t["eager_elems"]
        compile_s = float(rec.get("compile_seconds", DEFAULT_COMPILE_SECONDS))
        speedup = max(1.0, float(rec.get("speedup", DEFAULT_SPEEDUP)))
        if eager_rate * self.remaining * (1 - 1 / speedup) > compile_s:
            self._compiled = compiled_sums()

    def _record(self) -> None:
        """Save this machine's compile seconds and compiled speedup (used by later ``auto`` runs)."""
        t = self.timing
        if not self.key or not t["compiled_elems"]:
            return
        rate = t["compiled_s"] / t["compiled_elems"]
        compile_s = max(0.0, t["first_compiled_s"] - rate * t["first_compiled_elems"])
        rec = {"compile_seconds": round(compile_s, 2)}
        if t["eager_elems"]:
            rec["speedup"] = round((t["eager_s"] / t["eager_elems"]) / rate, 3)
        recs = _records()
        recs[self.key] = {**recs.get(self.key, {}), **rec}
        _save_records(recs)

    def summary(self) -> dict[str, Any]:
        """What ran: mode, whether compiled, measured seconds."""
        return {"mode": self.mode, "compiled": self.using_compiled, **{k: v for k, v in self.timing.items()}}


_COMPILED: Any = None


def compiled_sums() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``chunk_sums`` through ``torch.compile`` (one wrapper per process: shapes compiled once)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(chunk_sums, dynamic=False)
    return _COMPILED


DEFAULT_COMPILE_SECONDS = 60.0  # before this machine has compiled once
DEFAULT_SPEEDUP = 2.5


def kernel_key(vocab: int, temperatures: int, dtype: torch.dtype, device: torch.device) -> str:
    """What a recorded compile time depends on: torch, device, threads, shape."""
    return f"torch{torch.__version__}/{device.type}/threads{torch.get_num_threads()}/V{vocab}/T{temperatures}/{dtype}"


def _pad(args: tuple[torch.Tensor, ...], extra: int) -> tuple[torch.Tensor, ...]:
    z, z2, zmax, s, zz, inv_t = args
    rows = z.new_zeros(extra, z.shape[1])
    return (torch.cat([z, rows]), torch.cat([z2, rows]), torch.cat([zmax, zmax.new_zeros(extra)]),
            torch.cat([s, s.new_ones(s.shape[0], extra)], 1), torch.cat([zz, zz.new_ones(extra)]), inv_t)


def _records_path() -> Path:
    from ..paths import home

    return Path(home()) / "kernel_timings.json"


def _records() -> dict[str, Any]:
    try:
        return json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_records(recs: dict[str, Any]) -> None:
    try:
        path = _records_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(recs, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass

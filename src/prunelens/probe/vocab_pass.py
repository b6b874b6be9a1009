"""The vocabulary pass: every vocab-sized row sum behind the logit- and probability-space metrics.

Per probed layer the dense side is summarised once (``DenseRows``: ``max z``, ``Σz²``, the
top-10 tokens, ``argmax z``) and shared by every unit and method read at that layer. Per unit,
one call walks the rows in cache-sized chunks and, for all temperatures at once, returns the
row sums in the input dtype (``e = exp((z - max z)/T)``, so ``p = e/s``):

* pass 1 (per T): ``s = Σe``, ``Σe²``, ``Σ e Δz`` (→ ``μ = E_p[Δz]``), and ``Σ z Δz``, ``Σ Δz``,
  ``argmax z'``;
* pass 2 (per T): with ``b = (Δz - μ)/T``, ``ĥ = expm1(b) - b`` and ``g = b + ĥ``:
  ``Σeb, Σeĥ, Σeb², Σwb, Σwb², Σwg, Σwg², max b`` (``w = e²``), and once
  ``Σ Δz⊥², Σ (Δz - mean Δz)², Σ|Δz|, ΣΔz²``.

``ĥ`` is never taken as ``expm1(b) - b`` of a rounded ``expm1``: for ``|b| < 1/2`` it is a
degree-10 series (relative error < 1e-9), otherwise ``exp(b) - 1 - b``, so the compiled kernel
(whose ``expm1`` is ``exp - 1``) and eager agree with a float64 truth for every magnitude.

``SumsKernel`` runs the same sums eagerly or compiled. Compiled on a CPU (float32): the C
function of ``native`` (two loops per row, built by the system compiler in about a second);
elsewhere (a GPU, float64, or ``PRUNELENS_KERNEL_BACKEND=aoti``): one fused loop nest per chunk
(padded to one shape) built ahead of time with AOTInductor. Either is kept in
``$PRUNELENS_HOME/kernels`` (``kernel_cache``: opened only when this user built it, sha256 checked) —
built once per machine, torch version and shape, then loaded in
milliseconds by every later run. ``mode="auto"`` uses a kept kernel from the first cell; without one it starts
eager, times it, and builds only when the measured eager cost of the cells still to come
exceeds the build time (recorded per machine after a build; an estimate before that).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunelens.errors import PrunelensError
from prunelens.probe import kernel_cache, vocab_pass_c

CACHE_BYTES = 1 << 20  # [rows x vocab] temporaries per chunk: about one L2 cache (CPU)
GPU_CHUNK_BYTES = 1 << 26  # on an accelerator: fewer, larger launches
TOPK = 10
SERIES_LIMIT = 0.5  # |b| below this: hb from the series
# 1/k! for k = 2..11: hb(b) = b² Σ_k b^(k-2)/k!
_INV_FACT = [1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040, 1 / 40320, 1 / 362880, 1 / 3628800, 1 / 39916800]
PER_T = ("s", "sw", "eb", "eh", "ebb", "wb", "wbb", "wg", "wgg", "bmax")
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


def chunk_sums(z: torch.Tensor, z2: torch.Tensor, zmax: torch.Tensor, zz: torch.Tensor,
               inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums of one chunk: ``([len(PER_T), nT, rows], [len(ONCE), rows])`` in the input dtype.

    ``z``, ``z2`` [rows, V]; ``zmax``, ``zz`` [rows]; ``inv_t`` [nT]. This is the function the
    compiler fuses (``hb_of`` as a series); ``chunk_sums_eager`` is the same with fewer eager ops.
    """
    return _sums(z, z2, zmax, zz, inv_t, hb_of)


def chunk_sums_eager(z: torch.Tensor, z2: torch.Tensor, zmax: torch.Tensor, zz: torch.Tensor,
                     inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunk_sums`` for eager mode."""
    return _sums(z, z2, zmax, zz, inv_t, hb_of_eager)


def _sums(z, z2, zmax, zz, inv_t, hb: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
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
        s = e.sum(-1)
        mu = dot(e, dz) / s
        b = (dz - mu.unsqueeze(-1)) * it
        h = hb(b)
        g = b + h
        w = e * e
        eb, wb, wg = e * b, w * b, w * g
        per_t.append(torch.stack([s, dot(e, e), eb.sum(-1), dot(e, h), dot(eb, b), wb.sum(-1), dot(wb, b), wg.sum(-1),
                                  dot(wg, g), b.amax(-1)]))
    return torch.stack(per_t, 1), torch.stack(once)


def _metric_dtype(z: torch.Tensor) -> torch.Tensor:
    """``z`` in the dtype the sums run in: float32 or float64 as given, float32 for anything narrower."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _inverse_temperatures(temperatures: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([1.0 / t for t in temperatures], dtype=like.dtype, device=like.device)


@dataclass
class DenseRows:
    """Dense-side statistics of logit rows ``z`` [R, V], shared by every unit read at one layer."""

    z: torch.Tensor
    zmax: torch.Tensor  # [R]
    zz: torch.Tensor  # [R] Σz²
    top: torch.Tensor  # [R, TOPK] token ids by descending z
    argmax: torch.Tensor  # [R] z.argmax(-1)
    inv_t: torch.Tensor  # [nT]

    @classmethod
    def of(cls, z: torch.Tensor, temperatures: list[float], native_lib: Any = None) -> DenseRows:
        """The statistics of ``z``; ``native_lib`` (float32 CPU rows): from the C kernel's one pass."""
        z = _metric_dtype(z)
        inv_t = _inverse_temperatures(temperatures, z)
        got = None
        if native_lib is not None and z.device.type == "cpu" and z.dtype == torch.float32:
            got = vocab_pass_c.native_dense(native_lib, z, TOPK)
        if got is not None:
            zz, topv, topi = got
            return cls(z, topv[:, 0].contiguous(), zz, topi, topi[:, 0].clone(), inv_t)
        top = z.topk(min(TOPK, z.shape[1]), dim=-1)
        zz = torch.linalg.vector_norm(z, dim=-1).square()  # one pass (vecdot multiplies into a [R, V] temporary first)
        argmax = top.indices[:, 0].clone()
        if top.values.shape[1] > 1:  # argmax's first-index rule where the top two tie (topk's order is unspecified)
            tied = (top.values[:, 0] == top.values[:, 1]).nonzero().view(-1)
            if tied.numel():
                argmax[tied] = z[tied].argmax(-1)
        return cls(z, top.values[:, 0].contiguous(), zz, top.indices, argmax, inv_t)


def _chunks(rows: int, vocab: int, itemsize: int, device: torch.device | None = None) -> list[tuple[int, int]]:
    budget = CACHE_BYTES if device is None or device.type == "cpu" else GPU_CHUNK_BYTES
    step = max(1, budget // max(1, vocab * itemsize))
    return [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]


def _kernel_rows(vocab: int, itemsize: int, device: torch.device) -> int:
    """Rows per compiled call, whatever the input's rows (fewer are padded, so one kept kernel serves every
    run): one cache-sized chunk on a CPU (each of the kernel's loops sweeps all its rows), at most 1024 on a GPU."""
    budget = CACHE_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES
    rows = max(1, budget // max(1, vocab * itemsize))
    return rows if device.type == "cpu" else min(1024, rows)


class SumsKernel:
    """``chunk_sums`` over all rows, eager or compiled.

    ``mode``: ``eager``; ``compiled`` (load or build the compiled kernel on the first call);
    ``auto``: compiled from the first call when this machine kept a compiled kernel for the
    shape, otherwise eager until ``expect`` has announced enough work that the measured eager
    time still to come exceeds the build time (recorded after a build, or
    ``DEFAULT_COMPILE_SECONDS``) plus the compiled time; short runs never build.
    """

    def __init__(self, mode: str = "auto"):
        if mode not in ("eager", "compiled", "auto"):
            raise ValueError(f"kernel mode must be eager, compiled or auto, not {mode!r}")
        self.mode = mode
        self._compile = False  # decided (compiled mode, a kept kernel, or auto found it pays): use the compiled kernel
        # per (vocab, temperatures, dtype, device): the compiled kernel and its rows per call, or None (eager)
        self._fns: dict[tuple[Any, ...], tuple[Callable[..., Any], int] | None] = {}
        self.remaining = 0  # vocab elements still expected (auto mode)
        self.timing: dict[str, Any] = {"eager_s": 0.0, "eager_elems": 0, "compiled_s": 0.0, "compiled_elems": 0,
                                       "build_s": 0.0, "loaded": False}
        self.key = ""
        self._native_lib: Any = None  # the C kernel's library, once this kernel uses it

    def dense_rows(self, z: torch.Tensor, temperatures: list[float]) -> DenseRows:
        """``DenseRows.of(z)``, from the C kernel's dense pass when this kernel runs compiled on a CPU (decided
        here when it can be: a run's dense rows come from one path from its first layer on)."""
        zf = _metric_dtype(z)
        empty = zf.new_empty(0)
        # shape only
        self._entry(DenseRows(zf, empty, empty, empty.long(), empty.long(), _inverse_temperatures(temperatures, zf)))
        return DenseRows.of(zf, temperatures, self._native_lib if self._compile else None)

    def _entry(self, dense: DenseRows) -> tuple[tuple[Any, ...], tuple[Callable[..., Any], int] | None]:
        """This shape's signature and compiled kernel (None: eager), deciding and preparing it on first use."""
        z = dense.z
        if not self._compile:
            self._compile = self.mode == "compiled" or self._decide(dense)
        sig = (z.shape[1], dense.inv_t.shape[0], z.dtype, z.device)
        if self._compile and sig not in self._fns:
            self._fns[sig] = self._prepare(dense)
        return sig, self._fns.get(sig) if self._compile else None

    @property
    def using_compiled(self) -> bool:
        return self._compile and any(v is not None for v in self._fns.values())

    def expect(self, elements: int, key: str = "") -> None:
        """Announce ``elements`` more vocab elements (rows × vocab) to come; ``key`` names the shape/machine."""
        self.remaining = int(elements)
        self.key = key or self.key

    def __call__(self, dense: DenseRows, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums for all rows: ``([len(PER_T), nT, R], [len(ONCE), R])``."""
        z = dense.z
        z2 = z2.to(z.dtype)
        rows, vocab = z.shape
        sig, entry = self._entry(dense)
        compiled = entry is not None
        t0 = time.perf_counter()
        try:
            with denormals_flushed(z.device):
                out = self._run(dense, z2, entry)
        except Exception as exc:  # a kernel that does not run here: stay correct, just slower
            if not compiled:
                raise
            warnings.warn(f"the compiled probe metric kernel failed ({type(exc).__name__}); using eager mode",
                          stacklevel=2)
            self._fns[sig], compiled = None, False
            t0 = time.perf_counter()
            with denormals_flushed(z.device):
                out = self._run(dense, z2, None)
        dt = time.perf_counter() - t0
        kind = "compiled" if compiled else "eager"
        self.timing[f"{kind}_s"] += dt
        self.timing[f"{kind}_elems"] += rows * vocab
        if compiled and self.timing["compiled_elems"] == rows * vocab:
            self._record()
        self.remaining = max(0, self.remaining - rows * vocab)
        return out

    def _prepare(self, dense: DenseRows) -> tuple[Callable[..., Any], int] | None:
        """Load (or build and keep) the compiled kernel for ``dense``'s shape and its rows per call; None (and a
        warning) if it cannot be built or disagrees with the eager sums."""
        try:
            args = _example_args(dense)
            fn, built_s = compiled_kernel(args)
            agrees = _self_test(fn, dense)
        except Exception as exc:  # no compiler, unsupported backend
            warnings.warn(f"building the compiled probe metric kernel failed ({type(exc).__name__}: {exc}); "
                          "using eager mode", stacklevel=4)
            return None
        if not agrees:
            warnings.warn("the compiled probe metric kernel disagrees with the eager one on a test input; "
                          "using eager mode", stacklevel=4)
            return None
        if built_s:
            self.timing["build_s"] += built_s
        else:
            self.timing["loaded"] = True
        if backend(dense.z.device, dense.z.dtype) == "native":
            self._native_lib = vocab_pass_c.load_library()[0]  # kept: the dense pass uses it too
            return fn, 0
        return fn, args[0].shape[0]

    def _run(self, dense: DenseRows, z2: torch.Tensor, compiled: tuple[Callable[..., Any], int] | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager over cache-sized chunks, or the compiled kernel over chunks of exactly its rows (the last padded)."""
        z = dense.z
        if compiled is not None:
            fn, step = compiled  # step 0: any rows in one call (the native kernel walks rows itself)
            spans = ([(lo, min(z.shape[0], lo + step)) for lo in range(0, z.shape[0], step)] if step
                     else [(0, z.shape[0])])
        else:
            fn, step = chunk_sums_eager, 0
            spans = _chunks(z.shape[0], z.shape[1], z.element_size(), z.device)
        per, once = [], []
        for lo, hi in spans:
            args = (z[lo:hi], z2[lo:hi], dense.zmax[lo:hi], dense.zz[lo:hi], dense.inv_t)
            if hi - lo < step:
                args = _pad(args, step - (hi - lo))
            p, o = fn(*args)
            per.append(p[..., : hi - lo])
            once.append(o[..., : hi - lo])
        return torch.cat(per, -1), torch.cat(once, -1)

    def _decide(self, dense: DenseRows) -> bool:
        """Auto mode: compiled if this machine kept a kernel for the shape, or once the eager time still
        to come would exceed build + compiled time."""
        if self.mode != "auto":
            return False
        z = dense.z
        if z.shape[1] < AUTO_MIN_VOCAB:  # toy vocabularies (test models) stay eager unless asked
            return False
        if kept_kernel_exists(z.shape[1], dense.inv_t.shape[0], z.device, z.dtype):
            return True
        t = self.timing
        if not t["eager_elems"] or not self.remaining:
            return False
        rec = _record_for(self.key)
        eager_rate = t["eager_s"] / t["eager_elems"]
        default_s = NATIVE_COMPILE_SECONDS if backend(z.device, z.dtype) == "native" else DEFAULT_COMPILE_SECONDS
        compile_s = float(rec.get("compile_seconds", default_s))
        speedup = max(1.0, float(rec.get("speedup", DEFAULT_SPEEDUP)))
        return eager_rate * self.remaining * (1 - 1 / speedup) > compile_s

    def _record(self) -> None:
        """Save this machine's build seconds and compiled speedup (used by later ``auto`` runs)."""
        t = self.timing
        if not self.key or not t["compiled_elems"]:
            return
        rec: dict[str, float] = {}
        if t["build_s"]:
            rec["compile_seconds"] = round(t["build_s"], 2)
        if t["eager_elems"]:
            rec["speedup"] = round((t["eager_s"] / t["eager_elems"]) / (t["compiled_s"] / t["compiled_elems"]), 3)
        if rec:
            recs = _records()
            recs[self.key] = {**recs.get(self.key, {}), **rec}
            _save_records(recs)

    def summary(self) -> dict[str, Any]:
        """What ran: mode, whether compiled, measured seconds."""
        return {"mode": self.mode, "compiled": self.using_compiled, **{k: v for k, v in self.timing.items()}}


@contextmanager
def denormals_flushed(device: torch.device) -> Iterator[None]:
    """Flush subnormal floats to zero on this CPU thread while the sums run, then restore the setting.

    Tiny ``e = exp(z - max z)`` times tiny ``b`` makes subnormal products, whose arithmetic costs
    ~100x on x86; every sum has a term ≥ 1e-38 (the top token: ``e = 1``), so flushed terms change
    nothing at float32 precision.
    """
    if device.type != "cpu":
        yield
        return
    was = bool((torch.tensor([1e-39]) * 2 == 0).item())  # already flushing (set by the user)?
    if not was:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


DEFAULT_COMPILE_SECONDS = 60.0  # AOTInductor, before this machine has built a kernel once
AUTO_MIN_VOCAB = 1024  # auto mode never compiles below this vocabulary (nothing to gain, and tests stay eager)
NATIVE_COMPILE_SECONDS = 2.0  # the C kernel (about 0.5 s with gcc on a small CPU)
DEFAULT_SPEEDUP = 2.5
_LOADED: dict[str, Callable[..., Any]] = {}
_DIGEST = ""


def _example_args(dense: DenseRows) -> tuple[torch.Tensor, ...]:
    """Zero inputs of the compiled kernel's one shape for ``dense``."""
    z = dense.z
    rows = _kernel_rows(z.shape[1], z.element_size(), z.device)
    # five distinct tensors: export must not see two inputs as one
    return (z.new_zeros(rows, z.shape[1]), z.new_zeros(rows, z.shape[1]), z.new_zeros(rows), z.new_ones(rows),
            dense.inv_t)


def _source_digest() -> str:
    """What the compiled code depends on in this module: the kernel's source and constants."""
    global _DIGEST
    if not _DIGEST:
        funcs = (_sums, hb_of, chunk_sums, _example_args, compiled_kernel)
        text = "".join(inspect.getsource(f) for f in funcs) + repr((_INV_FACT, SERIES_LIMIT, PER_T, ONCE))
        _DIGEST = hashlib.sha256(text.encode()).hexdigest()[:16]
    return _DIGEST


def _self_test(fn: Callable[..., Any], dense: DenseRows) -> bool:
    """Whether ``fn`` gives the eager sums (relative 1e-3) on seeded logits of ``dense``'s kernel shape."""
    rows, vocab = _example_args(dense)[0].shape
    g = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(rows, vocab, generator=g)).to(dense.z.dtype).to(dense.z.device)
    z2 = z + 0.01 * torch.randn(rows, vocab, generator=g).to(z.dtype).to(z.device)
    args = (z, z2, z.amax(-1), torch.linalg.vecdot(z, z), dense.inv_t)
    got, want = fn(*args), chunk_sums_eager(*args)
    keep = [k for k, name in enumerate(PER_T) if name != "eb"]  # Σeb is a rounding residual (≈ 0): no relative match
    pairs = [(got[0][keep], want[0][keep]), (got[1], want[1])]
    return all(bool(torch.isfinite(a).all()) and bool(((a - b).abs() <= 1e-3 * b.abs() + 1e-6).all()) for a, b in pairs)


def kernel_path(rows: int, vocab: int, temperatures: int, dtype: torch.dtype, device: torch.device) -> Path:
    """Where the compiled kernel for ``[rows, vocab]`` chunks is kept: ``kernel_key`` + rows, the CUDA
    capability and the kernel's source digest (one file per key)."""
    arch = "-sm{}{}".format(*torch.cuda.get_device_capability(device)) if device.type == "cuda" else ""
    key = f"{kernel_key(vocab, temperatures, dtype, device)}{arch}/rows{rows}/{_source_digest()}"
    from prunelens.probe.kernel_cache import cache_dir

    return cache_dir() / f"sums-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt2"


def _args_path(args: tuple[torch.Tensor, ...]) -> Path:
    z, inv_t = args[0], args[-1]
    return kernel_path(z.shape[0], z.shape[1], inv_t.shape[0], z.dtype, z.device)


def backend(device: torch.device, dtype: torch.dtype) -> str:
    """Which compiled kernel serves this device and dtype: ``native`` (CPU float32 with a C compiler) or
    ``aoti``; ``PRUNELENS_KERNEL_BACKEND=aoti`` forces AOTInductor."""
    forced = os.environ.get("PRUNELENS_KERNEL_BACKEND", "")
    if forced not in ("", "native", "aoti"):
        raise PrunelensError(f"PRUNELENS_KERNEL_BACKEND must be native or aoti, not {forced!r}")
    if forced != "aoti" and device.type == "cpu" and dtype == torch.float32 and vocab_pass_c.compiler() is not None:
        return "native"
    return "aoti"


def kept_kernel_exists(vocab: int, temperatures: int, device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether this machine kept a compiled kernel for full chunks of this vocabulary (what a long run uses)."""
    if backend(device, dtype) == "native":
        path = vocab_pass_c.library_path()
        return path is not None and kernel_cache.trusted(path)
    rows = _kernel_rows(vocab, torch.empty((), dtype=dtype).element_size(), device)
    return kernel_cache.trusted(kernel_path(rows, vocab, temperatures, dtype, device))


class _Sums(torch.nn.Module):
    def forward(self, z, z2, zmax, zz, inv_t):  # noqa: D102 - the exported function
        return chunk_sums(z, z2, zmax, zz, inv_t)


def compiled_kernel(args: tuple[torch.Tensor, ...]) -> tuple[Callable[..., Any], float]:
    """The compiled ``chunk_sums`` for these shapes and the seconds spent building it (0 if kept from before).

    Loaded from ``kernel_path`` when a build was kept; otherwise exported, compiled with
    AOTInductor and kept (written under a temporary name, then renamed: concurrent ranks are safe).
    """
    z = args[0]
    if backend(z.device, z.dtype) == "native":
        lib, built_s = vocab_pass_c.load_library()
        return functools.partial(vocab_pass_c.native_sums, lib), built_s
    path = _args_path(args)
    index = z.device.index if z.device.type == "cuda" and z.device.index is not None else -1
    key = f"{path}@{index}"  # one loaded copy per device: a rank's kernel runs on its LOCAL_RANK's GPU
    if key in _LOADED:
        return _LOADED[key], 0.0
    built_s = 0.0
    fn = None
    if kernel_cache.trusted(path):  # only a package this user built (owner, modes, recorded sha256)
        try:
            fn = torch._inductor.aoti_load_package(str(path), device_index=index)
        except Exception:  # a damaged file: build again
            fn = None
    if fn is None:
        t0 = time.perf_counter()
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(_Sums(), args, strict=False)
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
            kernel_cache.keep(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fn = torch._inductor.aoti_load_package(str(path), device_index=index)
        built_s = time.perf_counter() - t0
    _LOADED[key] = fn
    return fn, built_s


def kernel_key(vocab: int, temperatures: int, dtype: torch.dtype, device: torch.device) -> str:
    """What a recorded build time depends on: torch, device, threads, shape."""
    return (f"torch{torch.__version__}/{device.type}/threads{torch.get_num_threads()}/V{vocab}/T{temperatures}/{dtype}"
            f"/{backend(device, dtype)}")


def _pad(args: tuple[torch.Tensor, ...], extra: int) -> tuple[torch.Tensor, ...]:
    z, z2, zmax, zz, inv_t = args
    rows = z.new_zeros(extra, z.shape[1])
    return (torch.cat([z, rows]), torch.cat([z2, rows]), torch.cat([zmax, zmax.new_zeros(extra)]),
            torch.cat([zz, zz.new_ones(extra)]), inv_t)


def _records_path() -> Path:
    from prunelens.paths import home

    return Path(home()) / "kernel_timings.json"


def _records() -> dict[str, Any]:
    try:
        return json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}


def _record_for(key: str) -> dict[str, Any]:
    """This key's record, else one for the same machine and vocabulary at another temperature count
    (the build time barely depends on it), else nothing."""
    recs = _records()
    if key in recs:
        return recs[key]
    pattern = re.sub(r"/T\d+/", "/T*/", key)
    for other, rec in sorted(recs.items()):
        if re.sub(r"/T\d+/", "/T*/", other) == pattern:
            return rec
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

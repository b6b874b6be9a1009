"""Peak memory and time of a probe or a compression, from the model's config alone (no weights are read).

The model is built on the meta device (accelerate's ``init_empty_weights``): parameter shapes, the decoder's
linears and the vocabulary come from it. The cost model (docs/scale.md) is, per device:

    peak = weights (requested dtype) + one layer's statistics + one cell's (or layer's) working set
           + activations + a fixed allowance (runtime, allocator)

- statistics: the calibration statistics of one layer, float32 (``calibration.LayerwiseStats`` holds one
  layer at a time): a Hessian d_in² x 4 B per distinct linear input (the linears of a sublayer before its
  output projection share one input), the input norms d_in x 4 B.
- working set of a weight method on its largest linear: float32 copies of the weight (read, dead-input fix,
  result: ``WEIGHT_COPIES``), the unit's new weights in the model dtype, and for an OBS solver (SparseGPT,
  GPTQ) ``SOLVER_HESSIANS`` extra d_in² float32 matrices (damped copy, Cholesky factor, inverse, its factor,
  temporaries).
- activations: every layer's cached dense input and free-running rows, ``LOGIT_COPIES`` float32
  [rows x vocab] arrays (the dense logits kept, a cell's logits, their metric temporaries), and the
  calibration batch's hidden and MLP activations.

Time is FLOPs / throughput plus weight bytes read per decoding step / bandwidth, with the throughput constants of
``DEVICE_CLASSES`` (assumptions, stated there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from prunelens.errors import unknown
from prunelens.units import Unit

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
WEIGHT_COPIES = 3  # float32 copies of the largest linear's weight alive in compress_weight (read, dead-fix, out)
SOLVER_HESSIANS = 6  # extra float32 d_in² matrices in the OBS solver: fitted to the 8B twin's SparseGPT peak
LOGIT_COPIES = 3  # float32 [rows x vocab] arrays: the dense logits kept, a cell's, their metric temporaries
ALLOWANCE = {"cpu": int(0.75 * GiB), "cuda": int(0.5 * GiB)}  # python, torch, transformers; CUDA context margin


@dataclass(frozen=True)
class DeviceClass:
    """Assumed sustained rates of a device class (see docs/scale.md for where each comes from)."""

    flops: dict[str, float]  # dtype -> FLOP/s sustained on the probe's matmuls
    bandwidth: float  # bytes/s of weight reads (memory-bound decoding)
    load: float  # bytes/s of loading the checkpoint and hashing its weights
    kind: str  # "cpu" or "cuda"
    layer_latency: float = 0.0  # seconds per decoder layer per forward call (kernel launches, Python)


STARTUP_SECONDS = 20.0  # interpreter, torch and transformers imports, CUDA initialisation


DEVICE_CLASSES = {
    # this project's 2-core CPU, shared: fitted to the 8B-twin drop and wanda probes of docs/scale.md
    "cpu": DeviceClass({"float32": 5e10, "bfloat16": 3e9, "float16": 3e9}, 4e9, 2.5e8, "cpu", 2e-4),
    # H100 SXM: 989 TFLOP/s dense bf16 peak, ~40 % sustained; 3.35 TB/s HBM3, ~70 % sustained; NVMe load
    "h100": DeviceClass({"float32": 2.0e14, "bfloat16": 4.0e14, "float16": 4.0e14}, 2.3e12, 2e9, "cuda", 2e-4),
    # A100 SXM: 312 TFLOP/s dense bf16 peak, ~40 % sustained; TF32 156; 2.0 TB/s HBM2e, ~70 % sustained
    "a100": DeviceClass({"float32": 6.0e13, "bfloat16": 1.25e14, "float16": 1.25e14}, 1.4e12, 2e9, "cuda", 2e-4),
}


@dataclass
class Estimate:
    peak_bytes: dict[str, int]
    seconds: float
    device_class: str
    parts: dict[str, int] = field(default_factory=dict)  # the peak's terms, in bytes
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def lines(self) -> list[str]:
        out = [f"peak {dev}: {b / GiB:.2f} GiB" for dev, b in self.peak_bytes.items()]
        out += [f"  {k}: {v / GiB:.3f} GiB" for k, v in self.parts.items()]
        out.append(f"time on {self.device_class}: ~{_duration(self.seconds)} (assumed throughput; see docs/scale.md)")
        return out + [f"note: {n}" for n in self.notes]


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


# -- the model, from its config only ----------------------------------------------------------------
def _in_out(mod: Any) -> tuple[int, int]:
    w = mod.weight
    return (int(w.shape[0]), int(w.shape[1])) if type(mod).__name__ == "Conv1D" else (int(w.shape[1]), int(w.shape[0]))


def unit_inputs(adapter: Any, unit: Unit) -> list[int]:
    """Widths of the distinct linear inputs of a unit: per sublayer, one shared by the linears before its output
    projection (q/k/v; gate/up) and one of the output projection."""
    subs = [Unit(unit.layer, "attn"), Unit(unit.layer, "mlp")] if unit.kind == "block" else [unit]
    widths: list[int] = []
    for sub in subs:
        lins = list(adapter.linears(sub).values())
        if not lins:
            continue
        *first, last = lins
        if first:
            widths.append(max(_in_out(m)[0] for m in first))
        widths.append(_in_out(last)[0])
    return widths


@dataclass
class Shape:
    """What the cost model reads from the meta model."""

    params: int
    decoder_params: int
    layers: int
    hidden: int
    vocab: int
    layer_linears: dict[Unit, list[tuple[int, int]]]  # unit -> (in, out) of each linear
    inputs: dict[Unit, list[int]]


def model_shape(spec: str, units_spec: str | None) -> tuple[Shape, list[Unit]]:
    from prunelens.model.adapters import get_adapter
    from prunelens.model.loading import read_config
    from prunelens.model.parameter_counts import meta_model
    from prunelens.units import select_units

    model = meta_model(read_config(spec))
    adapter = get_adapter(model)
    units = select_units(units_spec, adapter.num_layers) if units_spec else \
        [Unit(i, "block") for i in range(adapter.num_layers)]
    seen: set[int] = set()
    params = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params += p.numel()
    decoder = sum(p.numel() for p in adapter.layers.parameters())
    head = adapter.lm_head.weight
    shape = Shape(params, decoder, adapter.num_layers, int(model.config.hidden_size), int(head.shape[0]),
                  {u: [_in_out(m) for m in adapter.linears(u).values()] for u in units},
                  {u: unit_inputs(adapter, u) for u in units})
    return shape, units


# -- the cost model ---------------------------------------------------------------------------------
def _stats_bytes(shape: Shape, units: list[Unit], kinds: set[str]) -> int:
    """The largest one layer's statistics (every kind asked for), float32."""
    by_layer: dict[int, int] = {}
    for u in units:
        widths = shape.inputs[u]
        b = 0
        if "hessian" in kinds:
            b += sum(4 * w * w for w in widths)
        if "input_norms" in kinds:
            b += sum(4 * w for w in widths)
        by_layer[u.layer] = by_layer.get(u.layer, 0) + b
    return max(by_layer.values(), default=0)


def _method_bytes(shape: Shape, units: list[Unit], methods: list[Any], dtype_bytes: int) -> int:
    """One cell's (or one layer's) working set of the heaviest weight method."""
    worst = 0
    for m in methods:
        if not hasattr(m, "compress_weight"):
            continue
        solver = m.calibration == "hessian"
        for u in units:
            lins = shape.layer_linears[u]
            if not lins:
                continue
            new = sum(i * o for i, o in lins) * dtype_bytes
            largest = max(WEIGHT_COPIES * 4 * i * o + (SOLVER_HESSIANS * 4 * i * i if solver else 0) for i, o in lins)
            worst = max(worst, new + largest)
    return worst


def _device(device_class: str) -> DeviceClass:
    if device_class not in DEVICE_CLASSES:
        raise unknown("device class", device_class, DEVICE_CLASSES)
    return DEVICE_CLASSES[device_class]


def estimate_probe(spec: str, methods: list[Any], units_spec: str, dtype: str, device_class: str, *, samples: int,
                   steps: int, prompt_len: int, temperatures: int, localities: int, timings: list[str],
                   batch_size: int, calib_samples: int, calib_len: int) -> Estimate:
    """Peak memory and time of ``prunelens probe`` with these options (cost model: module docstring)."""
    dev = _device(device_class)
    b = _dtype_bytes(dtype, spec, dev.kind)
    shape, units = model_shape(spec, units_spec)
    kinds = {m.calibration for m in methods} - {"none"}
    t_len = prompt_len + steps
    free = "free_running" in timings
    rows = samples * steps
    logit_row = shape.vocab * 4
    calib_act = min(calib_samples, 8) * calib_len * (4 * shape.hidden * b + 3 * _widest(shape) * 4) if kinds else 0
    parts = {
        "weights": shape.params * b,
        "layer statistics": _stats_bytes(shape, units, kinds),
        "method working set": _method_bytes(shape, units, methods, b),
        "activations": shape.layers * samples * (t_len + (steps if free else 0)) * shape.hidden * b
        + LOGIT_COPIES * rows * logit_row + calib_act,
        "allowance": ALLOWANCE[dev.kind],
    }
    peak = sum(parts.values())
    # time: dense decode and capture, then per cell a pass from the unit's layer on (both timings), readouts
    flops_tok = 2 * shape.decoder_params
    head_flops = 2 * shape.hidden * shape.vocab
    dense = samples * t_len * flops_tok * (2 if free else 1) + samples * t_len * head_flops
    cells = len(methods) * len(units)
    per_cell = sum(samples * t_len * flops_tok * (shape.layers - u.layer) / shape.layers for u in units) / len(units)
    per_cell = per_cell * len(timings) + localities * len(timings) * rows * head_flops
    solver = sum(_solver_flops(shape, units, m) for m in methods)
    hessian_flops = sum(2 * w * w for u in units for w in shape.inputs[u]) if kinds else 0
    calib = calib_samples * calib_len * (flops_tok + hessian_flops) if kinds else 0
    rate = dev.flops["float32" if b == 4 else "bfloat16"]
    reads = (steps * (1 + (cells if free else 0))) * shape.params * b / dev.bandwidth  # decoding reads every weight
    load = STARTUP_SECONDS + shape.params * b / dev.load
    batches = -(-samples // batch_size)
    forwards = batches * (steps + 1 + cells * (int("teacher_forced" in timings) + (steps if free else 0)))
    load += forwards * shape.layers * dev.layer_latency  # launch-bound small forwards (a GPU's usual limit)
    seconds = load + (dense + cells * per_cell + calib) / rate + solver / dev.flops["float32"] + reads
    notes = [] if dev.kind == "cuda" or peak < 0.9 * _host_memory() else \
        [f"the peak exceeds 90 % of this machine's memory ({_host_memory() / GiB:.1f} GiB)"]
    return Estimate({"cpu" if dev.kind == "cpu" else "cuda:0": int(peak)}, float(seconds), device_class, parts, notes)


def estimate_compress(spec: str, method: Any, units_spec: str | None, dtype: str, device_class: str, *,
                      calib_samples: int, calib_len: int, batch_size: int = 8) -> Estimate:
    """Peak memory and time of ``prunelens compress`` (layer by layer: one layer's statistics and work)."""
    dev = _device(device_class)
    b = _dtype_bytes(dtype, spec, dev.kind)
    shape, units = model_shape(spec, units_spec)
    kinds = {method.calibration} - {"none"}
    calib_tokens = calib_samples * calib_len
    parts = {
        "weights": shape.params * b,
        "layer statistics": _stats_bytes(shape, units, kinds),
        "method working set": _method_bytes(shape, units, [method], b),
        # every calibration window's hidden state walked layer by layer (twice: input and output of a layer)
        "activations": (2 * calib_tokens * shape.hidden * b + min(calib_samples, batch_size) * calib_len
                        * 3 * _widest(shape) * 4) if kinds else 0,
        "allowance": ALLOWANCE[dev.kind],
    }
    rate = dev.flops["float32" if b == 4 else "bfloat16"]
    calib = calib_tokens * (2 * shape.decoder_params + sum(2 * w * w for u in units for w in shape.inputs[u])) \
        if kinds else 0
    seconds = STARTUP_SECONDS + 2 * shape.params * b / dev.load + calib / rate \
        + _solver_flops(shape, units, method) / dev.flops["float32"]  # load, then write the checkpoint
    return Estimate({"cpu" if dev.kind == "cpu" else "cuda:0": int(sum(parts.values()))}, float(seconds),
                    device_class, parts)


def _widest(shape: Shape) -> int:
    return max((o for lins in shape.layer_linears.values() for _, o in lins), default=shape.hidden)


def _solver_flops(shape: Shape, units: list[Unit], method: Any) -> float:
    if getattr(method, "calibration", "none") != "hessian":
        return 0.0
    total = 0.0
    for u in units:
        for i, o in shape.layer_linears[u]:
            total += 2 * i**3 + 2 * o * i * i  # Cholesky, inverse, factor; the column-block updates
    return total


def _dtype_bytes(dtype: str, spec: str = "", kind: str = "cpu") -> int:
    """Bytes per weight of ``--dtype`` (``auto``: the checkpoint's dtype; float32 becomes bfloat16 on CUDA)."""
    if dtype == "auto":
        from prunelens.model.loading import read_config

        cfg_dtype = str(getattr(read_config(spec), "dtype", None) or "float32").replace("torch.", "")
        dtype = "bfloat16" if kind == "cuda" and cfg_dtype == "float32" else cfg_dtype
    if dtype not in DTYPE_BYTES:
        raise unknown("dtype", dtype, ["auto", *DTYPE_BYTES])
    return DTYPE_BYTES[dtype]


def _host_memory() -> int:
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def show(est: Estimate, as_json: bool) -> None:
    """Print an estimate: one JSON object, or a few lines."""
    import click

    click.echo(est.as_json() if as_json else "\n".join(est.lines()))

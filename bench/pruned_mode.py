"""Pruned mode: ``checkpoint:path=DIR`` vs the method probed directly, per unit.

DIR is written first by ``prunelens compress`` (sequential: layer i is calibrated on inputs that
went through the already-compressed layers 0..i-1). The probe's ``wanda:sparsity=0.5`` is
calibrated on the dense model (the same calibration windows). So layer-0 units must agree to
float precision; later units differ by exactly that calibration difference.

    prunelens compress --model smollm2-135m --method wanda --sparsity 0.5 --calib-samples 8 --calib-len 128 \\
        --out /tmp/wanda50
    python bench/pruned_mode.py --checkpoint /tmp/wanda50 --calib-samples 8 --calib-len 128
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--method", default="wanda:sparsity=0.5")
    ap.add_argument("--units", default="L0.attn,L0.mlp,L1.attn,L1.mlp,L15.attn,L15.mlp,L29.attn,L29.mlp")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from prunelens.compression.methods import parse_method
    from prunelens.model.loading import load_model
    from prunelens.probe.engine import ProbeSettings
    from prunelens.probe.prompts import shakespeare_prompts
    from prunelens.probe.run import run_probe
    from prunelens.units import select_units
    from prunelens_store import open_store

    loaded = load_model(args.model)
    units = select_units(args.units, loaded.adapter.num_layers)
    methods = [parse_method(f"checkpoint:path={args.checkpoint}"), parse_method(args.method)]
    prompts = shakespeare_prompts(loaded.tokenizer, args.samples, 32, args.seed)
    settings = ProbeSettings(steps=args.steps, temperatures=(1.0,), localities=("local", "propagated"),
                             timings=("teacher_forced",), compile=False)
    out = Path(tempfile.mkdtemp(prefix="pruned_mode_")) / "s.zarr"
    run_probe(loaded, methods, units, prompts, settings, out, progress=False, seed=args.seed,
              calib_samples=args.calib_samples, calib_len=args.calib_len)
    ds = open_store(out)
    print(f"{args.model}: {methods[0].spec} vs {methods[1].spec} (calibration {args.calib_samples} x {args.calib_len}, "
          f"seed {args.seed}), {args.samples} samples x {args.steps} steps, teacher-forced, T = 1")
    print(f"{'unit':10} {'locality':11} {'KL ckpt':>10} {'KL direct':>10} {'max rel diff':>13}")
    for u in units:
        for loc in ("local", "propagated"):
            cell = {"unit": u.name, "locality": loc, "timing": "teacher_forced"}
            a = ds["kl"].sel({"method": methods[0].spec, **cell}).values
            b = ds["kl"].sel({"method": methods[1].spec, **cell}).values
            rel = float(np.max(np.abs(a - b) / np.abs(b)))
            print(f"{u.name:10} {loc:11} {a.mean():10.3e} {b.mean():10.3e} {rel:13.2e}"
                  f"{'  (<= 1e-4)' if rel <= 1e-4 else ''}")


if __name__ == "__main__":
    main()

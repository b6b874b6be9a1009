"""bf16 against float32 on the bundled model, per store column: how far the numbers move and whether rankings hold.

    python bench/bf16_fidelity.py                       # 60 sublayer drops, 8 samples x 16 steps, T = 1 (minutes)
    python bench/bf16_fidelity.py --samples 4 --steps 8 --units L10-19.mlp

Two probes of the same units, prompts and settings (local and propagated, teacher-forced and free-running),
one with ``--dtype float32`` and one with ``--dtype bfloat16``, both on the CPU. Per column (metric x locality x
timing, the probability space for the space-resolved metrics) it prints: the median over units of the relative
difference of each unit's mean (bf16 vs fp32), and Spearman's rho across units of those means (the ranking a plan
reads). Tolerances (docs/scale.md, "bf16 fidelity"): rho >= 0.95 on every KL column, free-running included;
median relative difference <= 0.25 on the KL columns. Exit status 1 if a tolerance is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

COLUMNS = ("kl", "kl_pred", "cos_dev", "rel_norm", "top1_agree", "dz_l2")
RHO_MIN, REL_MAX = 0.95, 0.25


def probe(out: Path, dtype: str, args: argparse.Namespace) -> float:
    import prunelens.cli as cli

    t0 = time.perf_counter()
    cli.main(["probe", "--model", args.model, "--method", "drop", "--units", args.units, "--samples", str(args.samples),
              "--steps", str(args.steps), "--temperature", "1.0", "--locality", "local,propagated",
              "--timing", "teacher_forced,free_running", "--dtype", dtype, "--device", "cpu", "--out", str(out),
              "--quiet"], standalone_mode=False)
    return time.perf_counter() - t0


def unit_means(ds, name: str) -> np.ndarray:
    """[unit, locality, timing] means over samples and steps (probability space, T = 1)."""
    v = ds[name]
    if "space" in v.dims:
        v = v.sel(space="probability")
    if "temperature" in v.dims:
        v = v.isel(temperature=0)
    return v.isel(method=0).mean(dim=("sample", "step")).transpose("unit", "locality", "timing").values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--units", default="attn,mlp")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--keep", type=Path, default=None, help="keep the two stores here (a rerun reuses them)")
    args = ap.parse_args()
    from scipy.stats import spearmanr

    from prunelens_store import open_store

    with tempfile.TemporaryDirectory(prefix="bf16-fidelity-") as tmp_dir:
        tmp = args.keep or Path(tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        secs = {d: probe(Path(tmp) / f"{d}.zarr", d, args) for d in ("float32", "bfloat16")}
        a, b = open_store(Path(tmp) / "float32.zarr"), open_store(Path(tmp) / "bfloat16.zarr")
        units = a.sizes["unit"]
        print(f"{args.model}: {units} units (drop), {args.samples} samples x {args.steps} steps, T = 1; "
              f"float32 {secs['float32']:.0f} s, bfloat16 {secs['bfloat16']:.0f} s")
        print(f"{'column':34s} {'median rel diff':>16s} {'Spearman':>9s}  check")
        ok = True
        for name in COLUMNS:
            x, y = unit_means(a, name), unit_means(b, name)
            for li, loc in enumerate(a["locality"].values):
                for ti, tim in enumerate(a["timing"].values):
                    fx, fy = x[:, li, ti], y[:, li, ti]
                    rel = float(np.nanmedian(np.abs(fy - fx) / np.maximum(np.abs(fx), 1e-12)))
                    rho = float(spearmanr(fx, fy).statistic) if np.ptp(fx) > 0 else float("nan")
                    check = ""
                    if name == "kl":
                        good = rho >= RHO_MIN and rel <= REL_MAX
                        ok &= good
                        check = "ok" if good else "FAIL"
                    print(f"{name + ' ' + str(loc) + ' ' + str(tim):34s} {rel:16.4f} {rho:9.3f}  {check}")
        print(f"bf16 fidelity: {'within' if ok else 'OUTSIDE'} tolerance (KL: Spearman >= {RHO_MIN}, "
              f"median relative difference <= {REL_MAX})")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

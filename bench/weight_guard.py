"""What the probe's weight check costs beside the cells it guards, measured side by side in one run.

    python bench/weight_guard.py [--model smollm2-135m] [--samples 16] [--steps 32] [--units L2.mlp,L14.attn,L27]
                                 [--method magnitude:sparsity=0.3] [--repeats 3] [--threads 0]

Per repeat, alternating: ``WeightGuard.check`` (per-layer digests of every weight, what a probe run
does after each cell), ``weights_fingerprint`` (the store identity's hash, for scale) and each unit's
cell (``ProbeEngine.measure``, default propagated/teacher-forced settings). Medians; the check's time
as a fraction of the median cell, and its throughput in GB/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="magnitude:sparsity=0.3")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--units", default="L2.mlp,L14.attn,L27")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    os.environ.setdefault("PRUNELENS_LOAD_PLUGINS", "")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from prunelens.compression.methods import parse_method
    from prunelens.model.loading import load_model, weights_fingerprint
    from prunelens.probe.engine import ProbeEngine, ProbeSettings
    from prunelens.probe.integrity import WeightGuard
    from prunelens.probe.prompts import shakespeare_prompts
    from prunelens.units import select_units

    loaded = load_model(args.model)
    units = select_units(args.units, loaded.adapter.num_layers)
    method = parse_method(args.method)
    prompts = shakespeare_prompts(loaded.tokenizer, args.samples, args.prompt_len)
    engine = ProbeEngine(loaded.adapter, prompts, ProbeSettings(steps=args.steps, batch_size=args.samples))
    engine.prepare()
    gb = sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values()) / 1e9
    print(f"{args.model}: {gb:.3f} GB of weights (state dict, tied counted twice), {args.samples} samples x "
          f"{args.steps} steps, method {method.spec}, units {args.units}, threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    guard = WeightGuard(loaded.model)
    print(f"guard made (digests taken once): {time.perf_counter() - t0:.3f} s")
    engine.measure(method, units[0])  # warm-up
    checks, prints, cells = [], [], []
    for _ in range(args.repeats):
        for u in units:
            t0 = time.perf_counter()
            engine.measure(method, u)
            cells.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            guard.check(method.spec, u.name)
            checks.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        weights_fingerprint(loaded.model)
        prints.append(time.perf_counter() - t0)
    check, cell, fp = statistics.median(checks), statistics.median(cells), statistics.median(prints)
    print(f"check after a cell: {check:.3f} s ({gb / check:.2f} GB/s); weights_fingerprint {fp:.3f} s; "
          f"cell {cell:.3f} s")
    print(f"check / cell = {check / cell:.3f} (the run's cost of the check per cell)")


if __name__ == "__main__":
    main()

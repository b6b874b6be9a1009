"""The metric pass beside one LM-head projection, on SmolLM2's shapes (random data, no model load).

    python bench/metric_kernel.py [--rows 128] [--vocab 49152] [--hidden 576] [--repeats 5] [--threads 1]
        [--compiled] [--aoti]

Alternating, per repeat: the perturbed readout ``[rows, hidden] @ [hidden, vocab]`` (what the
floor pays per unit), the metric pass at T = 1 and at T = 0.5, 0.7, 1.0 (shared dense
statistics, given), and the old per-temperature kernel (``--old``, eager, for reference).
Medians; ratios to the projection, and the metric pass per vocabulary element. ``--compiled``
also times the compiled kernel (on a CPU the C kernel, its one-time build printed separately)
and the dense statistics from its C pass; ``--aoti`` also the AOTInductor kernel (a GPU's).
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
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--aoti", action="store_true", help="also time the AOTInductor kernel (built once, ~25 s)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from prunelens.probe.metrics import row_metrics
    from prunelens.probe.vocab_pass import DenseRows, SumsKernel

    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.vocab, args.hidden, generator=g) * (3 / args.hidden ** 0.5)
    h = torch.randn(args.rows, args.hidden, generator=g)
    dh = 0.05 * torch.randn(args.rows, args.hidden, generator=g)
    z, z2 = h @ w.T, (h + dh) @ w.T
    d1, d3 = DenseRows.of(z, [1.0]), DenseRows.of(z, [0.5, 0.7, 1.0])
    modes = ["eager"] + (["compiled"] if args.compiled else []) + (["aoti"] if args.aoti else [])
    kernels = {m: SumsKernel("eager" if m == "eager" else "compiled") for m in modes}
    for m in modes:  # warm-up (builds or loads the kept kernel; the backend is chosen on the first call)
        os.environ["PRUNELENS_KERNEL_BACKEND"] = "aoti" if m == "aoti" else ""
        for d in (d1, d3):
            t = time.perf_counter()
            row_metrics(h, dh, z, z2, [1.0] if d is d1 else [0.5, 0.7, 1.0], dense=d, kernel=kernels[m])
            if m != "eager":
                print(f"{m}: build or load + first call, {d.inv_t.numel()} temperature(s): "
                      f"{time.perf_counter() - t:.1f} s", flush=True)
    os.environ["PRUNELENS_KERNEL_BACKEND"] = ""
    from prunelens.probe import vocab_pass_c

    # kept: no build
    native_lib = vocab_pass_c.load_library()[0] if "compiled" in kernels and vocab_pass_c.compiler() else None
    times: dict[str, list[float]] = {}

    def clock(name, fn):
        t = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - t)

    for _ in range(args.repeats):
        clock("LM-head projection", lambda: (h + dh) @ w.T)
        for m in modes:
            clock(f"metrics {m} T=1", lambda m=m: row_metrics(h, dh, z, z2, [1.0], dense=d1, kernel=kernels[m]))
            clock(f"metrics {m} T=0.5,0.7,1",
                  lambda m=m: row_metrics(h, dh, z, z2, [0.5, 0.7, 1.0], dense=d3, kernel=kernels[m]))
        clock("dense statistics, 1 T (once per layer)", lambda: DenseRows.of(z, [1.0]))
        if native_lib is not None:
            clock("dense statistics, C pass", lambda: DenseRows.of(z, [1.0], native_lib))
    print_medians(times, modes, args)


def print_medians(times: dict[str, list[float]], modes: list[str], args: argparse.Namespace) -> None:
    """Each timing's median beside the LM-head projection's, and the cost of three temperatures vs one."""
    proj = statistics.median(times["LM-head projection"])
    print(f"rows {args.rows}, vocab {args.vocab}, hidden {args.hidden}, threads {args.threads}, "
          f"medians of {args.repeats}")
    for name, v in times.items():
        med = statistics.median(v)
        per_elem = ""
        if name.startswith("metrics"):
            per_elem = f"  {med / (args.rows * args.vocab) * 1e9:5.1f} ns per vocabulary element"
        print(f"{name:42s} {med:8.3f} s  {med / proj:6.2f}x projection{per_elem}")
    for m in modes:
        one, three = statistics.median(times[f"metrics {m} T=1"]), statistics.median(times[f"metrics {m} T=0.5,0.7,1"])
        print(f"{m}: three temperatures / one = {three / one:.2f}x; "
              "per-unit cost with 3 T (projection + metrics) / with 1 T "
              f"= {(proj + three) / (proj + one):.2f}x")


if __name__ == "__main__":
    main()

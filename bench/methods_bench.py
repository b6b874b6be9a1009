"""Whole-model compression of SmolLM2-135M: held-out perplexity, time and peak memory per method.

Each configuration runs in its own subprocess (clean peak-RSS numbers): load the model,
compress the whole model sequentially with calibration windows from split="calib",
then score held-out Shakespeare windows (split="heldout"). Printed side by side as a table.

    .venv/bin/python bench/methods_bench.py                       # the default table
    .venv/bin/python bench/methods_bench.py --methods wanda,sparsegpt --calib-samples 32 --calib-len 256
    .venv/bin/python bench/methods_bench.py --one wanda:sparsity=0.5   # one row as JSON

Memory: ``peak_rss_delta`` is the peak resident set size while compressing minus the RSS just
before (sampled every 5 ms from /proc/self/statm). The weights are copied out of the
memory-mapped checkpoint first, so the delta is calibration activations + statistics +
temporaries, not the paging-in of the model. ``stats_mb`` is the largest statistic held at
once by design (one layer's input norms or Hessians, float32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

DEFAULT = ("dense,magnitude:sparsity=0.5,wanda:sparsity=0.5,sparsegpt:sparsity=0.5,"
           "magnitude:pattern=2:4,wanda:pattern=2:4,sparsegpt:pattern=2:4")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS in a thread; ``peak`` is the maximum seen while the context was open."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def largest_layer_stats_mb(loaded, method) -> float:
    """float32 size of one layer's distinct statistics (shared q/k/v and gate/up counted once)."""
    if method.calibration == "none":
        return 0.0
    import torch

    from prunelens.compression.calibration import collect_stats
    from prunelens.units import Unit

    stats = collect_stats(loaded.adapter, [Unit(0, "block")], method.calibration, torch.zeros(1, 4, dtype=torch.long))
    return sum(s.value.numel() * 4 for s in {id(s): s for s in stats.values()}.values()) / 2**20


def run_one(spec: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from prunelens.compression.methods import parse_method
    from prunelens.compression.sequential import compress_model
    from prunelens.evaluation.perplexity import perplexity
    from prunelens.model.loading import load_model
    from prunelens.text.corpora import token_windows

    loaded = load_model(args.model)
    heldout = torch.as_tensor(token_windows(loaded.tokenizer, args.ppl_samples, args.ppl_len, split="heldout"))
    row: dict = {"method": spec}
    if spec != "dense":
        method = parse_method(spec)
        calib = torch.as_tensor(token_windows(loaded.tokenizer, args.calib_samples, args.calib_len, split="calib"))
        for p in loaded.model.parameters():  # the checkpoint is memory-mapped: page every weight in before measuring
            p.data = p.data.clone()
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = compress_model(loaded, method, calib_ids=calib, progress=False)
            row["seconds"] = time.perf_counter() - t0
            row["cpu_seconds"] = time.process_time() - c0
        row["sparsity"] = summary["sparsity"]
        row["peak_rss_delta_mb"] = (mem.peak - mem.start) / 2**20
        row["stats_mb"] = largest_layer_stats_mb(loaded, method)
    t0 = time.perf_counter()
    row["ppl"] = perplexity(loaded, heldout)
    row["ppl_seconds"] = time.perf_counter() - t0
    import resource

    row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=DEFAULT, help="comma list of method specs ('dense' = no compression); "
                    "a spec's own commas are written as ';', e.g. wanda:sparsity=0.5;pattern=2:4")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--ppl-samples", type=int, default=16)
    ap.add_argument("--ppl-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", nargs="*", default=None,
                    help="print the table from saved 'RESULT {json}' lines in these files")
    args = ap.parse_args()
    os.environ.setdefault("PRUNELENS_LOAD_PLUGINS", "")
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one.replace(";", ","), args)), flush=True)
        return
    if args.rows is not None:
        rows = [json.loads(ln[7:]) for f in args.rows for ln in open(f) if ln.startswith("RESULT ")]
        order = args.methods.split(",")
        rows.sort(key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
        print_table(rows, args)
        return
    rows = []
    for spec in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", spec, "--model", args.model, "--threads", str(args.threads)]
        for k in ("calib_samples", "calib_len", "ppl_samples", "ppl_len"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{spec}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(lines[-1][7:])
        rows.append(row)
        print(f"  {spec}: ppl {row['ppl']:.2f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    print(f"\nSmolLM2-135M, whole-model compression; calibration {args.calib_samples} x {args.calib_len} tokens "
          "(calib split); "
          f"perplexity on {args.ppl_samples} x {args.ppl_len} held-out tokens; {args.threads} threads")
    header = (f"{'method':28s} {'ppl':>10s} {'x dense':>8s} {'sparsity':>8s} {'time s':>8s} {'cpu s':>8s} "
              f"{'peak RSS +MB':>12s} {'1-layer stats MB':>16s}")
    print(header)
    print("-" * len(header))
    dense = next((r["ppl"] for r in rows if r["method"] == "dense"), None)
    for r in rows:
        ratio = f"{r['ppl'] / dense:8.2f}" if dense else f"{'-':>8s}"
        if r["method"] == "dense":
            print(f"{r['method']:28s} {r['ppl']:10.2f} {ratio} {'-':>8s} {'-':>8s} {'-':>8s} {'-':>12s} {'-':>16s}")
        else:
            cpu = f"{r['cpu_seconds']:8.1f}" if "cpu_seconds" in r else f"{'-':>8s}"
            print(f"{r['method']:28s} {r['ppl']:10.2f} {ratio} {r['sparsity']:8.3f} {r['seconds']:8.1f} {cpu} "
                  f"{r['peak_rss_delta_mb']:12.0f} {r['stats_mb']:16.1f}")


if __name__ == "__main__":
    main()

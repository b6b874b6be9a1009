"""Run the speed and memory benches one after another, each in a fresh process (``make bench``).

Every bench prints its own ratios, measured side by side in one run; this runner only
chooses sizes, runs them in order with a time limit each, keeps their output under
``--out`` and prints one summary line per bench (ok / failed / timed out, seconds, the
bench's last line). ``--quick`` (the default) uses sizes that finish in minutes on a
2-core CPU; ``--full`` uses the sizes the documented targets are stated at.

    python bench/run_all.py                 # quick sizes, every bench
    python bench/run_all.py --full --only probe_bench,sparsegpt_ref
    python bench/run_all.py --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    """One bench script with its quick and full arguments."""

    name: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    what: str


BENCHES = (
    Bench("plugins_bench", ("--repeat", "3"), ("--repeat", "5"), "`prunelens plugins` wall time vs `--help`"),
    Bench("metric_kernel", ("--repeats", "3", "--threads", "1"), ("--repeats", "5", "--threads", "1", "--compiled"),
          "metric pass vs one LM-head projection"),
    Bench("metrics_rss", (), (), "peak memory of the metric pass on large perturbations"),
    Bench("probe_bench", ("--samples", "4", "--steps", "16", "--threads", "1", "--no-compile", "--skip-paper"),
          ("--samples", "16", "--steps", "32", "--threads", "1"), "probe engine vs naive protocols and its floor"),
    Bench("probe_whole", ("--samples", "2", "--steps", "16", "--units", "L2.attn,L2.mlp,L27.attn,L27.mlp",
                          "--repeats", "1", "--threads", "1"),
          ("--samples", "4", "--steps", "32", "--repeats", "3", "--threads", "1", "--prebuild", "--temps3"),
          "whole CLI process vs the floor"),
    Bench("sparsegpt_ref", ("--calib-samples", "4", "--calib-len", "128", "--threads", "1"),
          ("--calib-samples", "8", "--calib-len", "256", "--threads", "1"), "SparseGPT vs the reference layout"),
    Bench("generation_speed", ("--new", "32", "--repeats", "2"), ("--new", "64", "--repeats", "3"),
          "generation tokens/s of dense vs compressed"),
)


def run_one(bench: Bench, full: bool, out: Path, timeout: float) -> tuple[str, float, str]:
    """Run one bench; (status, seconds, last output line). Its full output goes to ``out/NAME.log``."""
    cmd = [sys.executable, str(BENCH / f"{bench.name}.py"), *(bench.full if full else bench.quick)]
    log = out / f"{bench.name}.log"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:  # its stdout may be bytes even with text=True
        partial = exc.stdout or ""
        status, text = "timed out", partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    seconds = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n{text}", encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    return status, seconds, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (the default)")
    size.add_argument("--full", action="store_true", help="the sizes the targets are stated at (long)")
    ap.add_argument("--only", default="", help="comma-separated bench names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the benches and exit")
    ap.add_argument("--out", default="bench/out/run_all", help="folder for each bench's full output")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per bench")
    args = ap.parse_args(argv)
    if args.list:
        for b in BENCHES:
            print(f"{b.name:18} {b.what}")
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {b.name for b in BENCHES})
    if unknown:
        print(f"run_all: unknown bench {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    chosen = [b for b in BENCHES if not names or b.name in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for b in chosen:
        print(f"[{b.name}] {b.what} ...", flush=True)
        status, seconds, last = run_one(b, args.full, out, args.timeout)
        failed += status != "ok"
        print(f"[{b.name}] {status} in {seconds:.0f} s: {last}", flush=True)
    print(f"{len(chosen) - failed}/{len(chosen)} benches ok; full output under {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

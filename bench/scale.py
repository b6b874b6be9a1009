"""Peak memory of bf16 probes on full-width shape twins of Llama-3-8B and Llama-3-70B, beside the cost model.

    python bench/scale.py                                   # 8B twin, drop and wanda (minutes)
    python bench/scale.py --twins 8b,70b --methods drop,wanda,sparsegpt,gptq
    python bench/scale.py --report                          # the table again from the saved results

A twin has the published config of its model (full hidden size, MLP width, heads, 128,256-token vocabulary,
rope theta 500,000) with only a few decoder layers and random bf16 weights, saved as safetensors (one shard per
layer) under --root with a borrowed tokenizer (SmolLM2's: its ids lie inside the twin's vocabulary). Each probe
(1 sample x 4 steps, calibration 4 x 64, local and propagated, teacher-forced and free-running, bfloat16, CPU)
is a fresh ``prunelens probe`` process under the heavy-run lock; its peak RSS (``ru_maxrss`` of the child) is
printed beside ``prunelens.model.cost_estimate``'s peak for the same command (the dry-run's number) and their ratio.
Results accumulate in --results (JSON), so slow runs can be added later.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
from peak import gib, heavy_lock, run_measured  # noqa: E402

# published configs (meta-llama/Meta-Llama-3-8B and -70B config.json); only num_hidden_layers is the twin's
LLAMA3 = dict(model_type="llama", vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
              rms_norm_eps=1e-5, hidden_act="silu", num_key_value_heads=8, bos_token_id=128000, eos_token_id=128001,
              tie_word_embeddings=False, attention_bias=False, mlp_bias=False, initializer_range=0.02)
TWINS = {
    "8b": dict(LLAMA3, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=4),
    "70b": dict(LLAMA3, hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_hidden_layers=1),
}
PUBLISHED_LAYERS = {"8b": 32, "70b": 80}
METHODS = {"drop": "drop", "wanda": "wanda:sparsity=0.5", "sparsegpt": "sparsegpt:sparsity=0.5", "gptq": "gptq"}
PROBE_ARGS = ["--samples", "1", "--steps", "4", "--prompt-len", "32", "--temperature", "1.0", "--calib-samples", "4",
              "--calib-len", "64", "--dtype", "bfloat16", "--device", "cpu", "--batch-size", "1",
              "--locality", "local,propagated", "--timing", "teacher_forced,free_running"]
# drop and wanda probe every MLP; the OBS solvers (minutes per 14336-wide down_proj on 2 cores) two of them
UNITS = {"drop": "mlp", "wanda": "mlp", "sparsegpt": "L1-2.mlp", "gptq": "L1-2.mlp"}


def build_twin(name: str, root: Path) -> Path:
    """Write the twin (config, sharded bf16 safetensors, tokenizer) once; return its directory."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    d = root / f"llama3-{name}-twin"
    if (d / "model.safetensors.index.json").is_file():
        return d
    tmp = root / f".llama3-{name}-twin.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = LlamaConfig(**{k: v for k, v in TWINS[name].items() if k != "model_type"}, dtype="bfloat16")
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(cfg)
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for pname, p in meta.named_parameters():
        key = f"layer{int(pname.split('.')[2]):02d}" if ".layers." in pname else pname.split(".")[-2]
        groups.setdefault(key, []).append((pname, tuple(p.shape)))
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    total = 0
    for key, params in groups.items():
        shard = {}
        for pname, shape in params:
            if len(shape) == 1:  # norms
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            shard[pname] = t
            total += t.numel() * 2
        fname = f"model-{key}.safetensors"
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({p: fname for p, _ in params})
        del shard
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}, indent=1))
    cfg.save_pretrained(tmp)
    tok_src = Path.home() / ".cache/prunelens/models/smollm2-135m"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_src / f, tmp / f)
    tmp.rename(d)
    return d


def probe_cmd(model: Path, method: str, out: Path, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "prunelens", "probe", "--model", str(model), "--method", METHODS[method],
            *PROBE_ARGS, "--units", UNITS[method], "--out", str(out), "--quiet", *(extra or [])]


def estimate_for(model: Path, method: str) -> dict:
    """The estimator's peak and seconds for the same probe (what ``--dry-run --json`` prints)."""
    import subprocess

    cmd = probe_cmd(model, method, Path("/tmp/unused.zarr"), ["--dry-run", "--json", "--device-class", "cpu"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PRUNELENS_NO_PROGRESS": "1", **_env()})
    if proc.returncode != 0:
        return {"error": proc.stdout.strip()[-300:] + proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout)


def _env() -> dict:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def report(results: dict) -> None:
    print("| twin | method | measured peak | estimate | estimate / measured | wall | est. seconds (cpu) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, r in results.items():
        twin, method = key.split("/")
        est = estimate_for(Path(r["model"]), method) if Path(r["model"]).is_dir() else {"error": "no twin"}
        if "error" in est:
            e_peak, ratio, e_sec = "?", "?", "?"
        else:
            peak = max(est["peak_bytes"].values())
            e_peak, ratio, e_sec = gib(peak), f"{peak / r['peak_bytes']:.3f}", f"{est['seconds']:.0f} s"
        print(f"| {twin} | {method} | {gib(r['peak_bytes'])} | {e_peak} | {ratio} | {r['seconds']:.0f} s | {e_sec} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", default="8b", help="Comma-separated: 8b, 70b.")
    ap.add_argument("--methods", default="drop,wanda", help=f"Comma-separated: {', '.join(METHODS)}.")
    ap.add_argument("--root", type=Path, default=Path("/tmp/prunelens-twins"))
    ap.add_argument("--results", type=Path, default=Path("/tmp/prunelens-twins/results.json"))
    ap.add_argument("--report", action="store_true", help="Only print the table of the saved results.")
    args = ap.parse_args()
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if not args.report:
        args.root.mkdir(parents=True, exist_ok=True)
        for twin in [t.strip() for t in args.twins.split(",") if t.strip()]:
            with heavy_lock():
                model = build_twin(twin, args.root)
            for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
                out = args.root / f"{twin}-{method}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                m = run_measured(probe_cmd(model, method, out), env=_env())
                shutil.rmtree(out, ignore_errors=True)
                print(f"{twin} {method}: exit {m.returncode}, {m.seconds:.0f} s, peak {gib(m.peak_bytes)}", flush=True)
                if m.returncode != 0:
                    print(m.output[-2000:])
                    continue
                results[f"{twin}/{method}"] = {"model": str(model), "peak_bytes": m.peak_bytes, "seconds": m.seconds}
                args.results.write_text(json.dumps(results, indent=1))
    report(results)


if __name__ == "__main__":
    main()

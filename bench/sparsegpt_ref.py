"""Whole-model SparseGPT: prunelens vs an independent minimal re-implementation of the reference layout.

    python bench/sparsegpt_ref.py [--calib-samples 8] [--calib-len 256] [--threads 1] [--sparsity 0.5]

The reference layout (as in IST-DASLab/sparsegpt, written here from the algorithm, not copied):
calibration samples one at a time, layer by layer; forward hooks on the layer's linears
accumulate each one's Hessian ``H = 2/n Σ x xᵀ`` (one layer of Hessians in memory), then every
linear is pruned column by column in 128-column blocks (mask chosen per block from
``w²/diag(H⁻¹)²``, OBS error propagated inside the block, then to the remaining columns), then
the pruned layer is re-run to give the next layer its inputs.

Each side runs in a fresh process with the same thread count and calibration windows; printed:
CPU seconds (process time) in total and per layer, wall seconds, peak RSS above the loaded
model, and how far the two pruned models agree (mask agreement, relative weight difference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# -- the reference layout -------------------------------------------------------------------------------
def prune_block_obs(w, h, sparsity: float, blocksize: int = 128, percdamp: float = 0.01):
    """SparseGPT on one weight [out, in] with Hessian h [in, in] (float32), returns the pruned weight."""
    import torch

    w = w.clone().float()
    h = h.clone()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(h))
    h += damp * torch.eye(cols)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        score = w1 ** 2 / torch.diag(hinv1).reshape(1, -1) ** 2
        thresh = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        mask1 = score <= thresh
        for i in range(i2 - i1):
            col = w1[:, i]
            d = hinv1[i, i]
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def reference_sparsegpt(model, ids, sparsity: float, layer_seconds: list[float]) -> None:
    """Sequential SparseGPT over every decoder layer, one calibration sample at a time."""
    import torch
    import torch.nn as nn

    layers = model.model.layers
    inps, kw = [], {}

    class Catch(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, *args, **kwargs):
            inps.append(x)
            kw.update(kwargs)
            raise ValueError

    layers[0] = Catch(layers[0])
    for s in range(ids.shape[0]):
        try:
            model(ids[s : s + 1], use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].inner
    kw = {k: v for k, v in kw.items() if k not in ("past_key_value", "past_key_values", "use_cache")}
    for layer in layers:
        t0 = time.process_time()
        lin = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        hs = {n: torch.zeros(m.in_features, m.in_features) for n, m in lin.items()}
        count = {n: 0 for n in lin}

        def hook(name, hs=hs, count=count):
            def fn(mod, args, out):
                x = args[0].reshape(-1, args[0].shape[-1]).float().t()
                n_new = 1  # one sample per call, as the reference counts
                hs[name] *= count[name] / (count[name] + n_new)
                count[name] += n_new
                x = math.sqrt(2 / count[name]) * x
                hs[name] += x @ x.t()
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in lin.items()]
        for x in inps:
            layer(x, **kw)
        for hd in handles:
            hd.remove()
        for n, m in lin.items():
            m.weight.data = prune_block_obs(m.weight.data, hs[n], sparsity).to(m.weight.dtype)
        del hs
        outs = []
        for x in inps:
            y = layer(x, **kw)
            outs.append(y[0] if isinstance(y, tuple) else y)
        inps = outs
        layer_seconds.append(time.process_time() - t0)


CHILD = r'''
import json, os, sys, time
sys.path.insert(0, os.environ["BENCH_DIR"])
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
import sparsegpt_ref as R
side, out, samples, length, sparsity = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
from prunelens.text.corpora import token_windows
from prunelens.model.loading import load_model
loaded = load_model("smollm2-135m")
ids = torch.as_tensor(token_windows(loaded.tokenizer, samples, length, split="calib", seed=0))
base = R.rss_mib()
R.reset_peak()
c0, w0 = time.process_time(), time.perf_counter()
per_layer = []
with torch.no_grad():
    if side == "reference":
        R.reference_sparsegpt(loaded.model, ids, sparsity, per_layer)
    else:
        from prunelens.compression.sequential import compress_model
        from prunelens.compression.methods import parse_method
        compress_model(loaded, parse_method(f"sparsegpt:sparsity={sparsity}"), calib_ids=ids, progress=False)
cpu, wall = time.process_time() - c0, time.perf_counter() - w0
peak = R.rss_mib("VmHWM") - base
weights = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.dim() == 2 and ".layers." in n}
torch.save(weights, out)
json.dump({"cpu": cpu, "wall": wall, "peak_above_model_mib": peak, "per_layer": per_layer,
           "layers": loaded.adapter.num_layers}, open(out + ".json", "w"))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="sgpt-ref-"))
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, BENCH_DIR=str(Path(__file__).resolve().parent), BENCH_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), PRUNELENS_LOAD_PLUGINS=os.environ.get("PRUNELENS_LOAD_PLUGINS", ""),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = {}
    for side in ("prunelens", "reference"):
        out = str(tmp / f"{side}.pt")
        proc = subprocess.run([sys.executable, str(script), side, out, str(args.calib_samples), str(args.calib_len),
                               str(args.sparsity)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        res[side] = json.loads(Path(out + ".json").read_text())
        print(f"{side:10s} " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in res[side].items()
                                           if k != "per_layer"}), flush=True)
    a, b = torch.load(tmp / "prunelens.pt", weights_only=True), torch.load(tmp / "reference.pt", weights_only=True)
    same = sum(int(((a[n] == 0) == (b[n] == 0)).sum()) for n in a) / sum(a[n].numel() for n in a)
    rel = max(float((a[n].float() - b[n].float()).norm() / b[n].float().norm()) for n in a)
    p, r = res["prunelens"], res["reference"]
    L = p["layers"]
    print(f"\nSmolLM2 whole-model SparseGPT {args.sparsity:g}, "
          f"{args.calib_samples} x {args.calib_len} calibration tokens, "
          f"{args.threads} thread(s), fresh process each")
    print(f"{'':12s} {'CPU s':>8s} {'CPU s/layer':>12s} {'wall s':>8s} {'peak RSS above model MiB':>26s}")
    for name, x in (("prunelens", p), ("reference", r)):
        print(f"{name:12s} {x['cpu']:8.1f} {x['cpu'] / L:12.2f} {x['wall']:8.1f} {x['peak_above_model_mib']:26.0f}")
    print(f"CPU seconds prunelens / reference: {p['cpu'] / r['cpu']:.2f}x (target <= 1.0x); "
          f"masks agree on {100 * same:.2f} % of weights, max relative weight difference per matrix {rel:.3g}")


if __name__ == "__main__":
    main()

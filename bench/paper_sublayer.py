"""The store's sublayer cells of attention drops = the paper's per-layer measurement.

Probes ``drop`` on every attention unit at ``--locality sublayer --readout raw`` (teacher-forced)
into a store, then re-computes each cell independently the way the paper's per-layer script
(CASE-Lab-UMD/Pruning-on-Representations, ``representation-analysis/transition_layerwise_compare.py``)
does: the residual is the layer input at the position, dense h = residual + attn_out, dropped
h = residual, logits = lm_head(h) (no final norm), KL(p_dense || q_dropped) at each T, in float64.
Prints the largest relative difference over every probed cell (all units, samples, steps, T).

    python bench/paper_sublayer.py --samples 4 --steps 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def paper_kl(model, adapter, seq: torch.Tensor, layer: int, positions: torch.Tensor, temps,
             logits64: bool = False) -> np.ndarray:
    """[T, sample, step] KL of dropping attention ``layer``, read at residual + attn_out with the LM head only.

    As the paper computes it, ``h = residual + attn_out`` and ``lm_head(h)`` in the model's float32
    (``logits64``: both in float64 instead); the KL itself always in float64 (the paper's
    ``F.kl_div`` in float32, printed to 6 decimals, could not be compared to 1e-4).
    """
    dec = adapter.layers[layer]
    attn = getattr(dec, adapter.spec.attn)
    got = {}
    h1 = dec.register_forward_pre_hook(lambda m, a, k: got.__setitem__("x", a[0] if a else k["hidden_states"]),
                                       with_kwargs=True)
    h2 = attn.register_forward_hook(lambda m, a, o: got.__setitem__("a", o[0] if isinstance(o, tuple) else o))
    try:
        model(input_ids=seq, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    x, a = got["x"][:, positions], got["a"][:, positions]
    if logits64:
        w = adapter.lm_head.weight.double()
        z, z2 = (x.double() + a.double()) @ w.T, x.double() @ w.T
    else:
        z, z2 = adapter.lm_head(x + a).double(), adapter.lm_head(x).double()
    out = []
    for t in temps:
        lp, lq = torch.log_softmax(z / t, -1), torch.log_softmax(z2 / t, -1)
        out.append((lp.exp() * (lp - lq)).sum(-1))
    return torch.stack(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--temperature", default="0.7,1.0")
    ap.add_argument("--out", default=None, help="store path (default: a temporary directory)")
    ap.add_argument("--store", default=None, help="reuse this store (made by an earlier run with the same settings)")
    ap.add_argument("--floor", type=float, default=1e-9, help="KL below this is compared absolutely (float32 logits)")
    args = ap.parse_args()

    from prunelens.compression.methods import parse_method
    from prunelens.model.loading import load_model
    from prunelens.probe.engine import ProbeSettings
    from prunelens.probe.prompts import shakespeare_prompts
    from prunelens.probe.run import run_probe
    from prunelens.units import select_units
    from prunelens_store import open_store

    temps = tuple(float(t) for t in args.temperature.split(","))
    loaded = load_model(args.model)
    units = select_units("attn", loaded.adapter.num_layers)
    prompts = shakespeare_prompts(loaded.tokenizer, args.samples, 32, 0)
    settings = ProbeSettings(steps=args.steps, temperatures=temps, localities=("sublayer",),
                             timings=("teacher_forced",),
                             readout="raw", batch_size=args.samples, compile=False)
    out = Path(args.store) if args.store else Path(args.out or tempfile.mkdtemp(prefix="paper_sublayer_")) / "s.zarr"
    t0 = time.perf_counter()
    run_probe(loaded, [parse_method("drop")], units, prompts, settings, out, progress=False)  # resumes = no-op if done
    t_probe = time.perf_counter() - t0
    ds = open_store(out)
    tokens = torch.as_tensor(ds["tokens"].values)
    if len(set(ds["prompt_len"].values.tolist())) != 1:
        raise SystemExit("prompts of different lengths (left padding): this check assumes one length")
    plen = int(ds["prompt_len"].values.max())
    positions = torch.arange(plen - 1, plen - 1 + args.steps)
    for logits64 in (False, True):
        got_all, want_all, names = [], [], []
        for u in units:
            want = paper_kl(loaded.model, loaded.adapter, tokens[:, :-1], u.layer, positions, temps, logits64)
            cell = {"method": "drop", "unit": u.name, "locality": "sublayer", "timing": "teacher_forced"}
            got = ds["kl"].sel(cell).values
            got_all.append(got.ravel())
            want_all.append(want.ravel())
            names += [u.name] * got.size
        g, w = np.concatenate(got_all), np.concatenate(want_all)
        big = w > args.floor  # below the floor KL is under float32 resolution of the logits: absolute check
        rel = np.abs(g - w)[big] / w[big]
        worst = int(np.argmax(np.where(big, np.abs(g - w) / np.maximum(w, 1e-300), 0)))
        absmax = float(np.abs(g - w)[~big].max()) if (~big).any() else 0.0
        ok = rel.max() <= 1e-4 and absmax <= args.floor
        print(f"{args.model}: {len(units)} attention drops x {args.samples} samples x {args.steps} steps "
              f"x {len(temps)} T = {g.size} cells; store (sublayer, raw, teacher-forced) vs paper "
              f"re-implementation ({'float64' if logits64 else 'float32, as the paper'} logits): "
              f"{big.sum()} cells with KL > {args.floor:g}: max relative difference {rel.max():.2e} "
              f"({names[worst]}, KL {w[worst]:.3g}), median {np.median(rel):.2e}; "
              f"{(~big).sum()} below: max absolute {absmax:.1e}; {'PASS' if ok else 'FAIL'} (rel <= 1e-4)")
    print(f"probe {t_probe:.1f} s; largest |raw logit| {float(ds_logit_max(loaded, tokens, positions)):.0f}")


@torch.no_grad()
def ds_logit_max(loaded, tokens: torch.Tensor, positions: torch.Tensor) -> float:
    """The largest raw-readout logit magnitude at the last layer (float32 resolution there: ~|z| * 6e-8)."""
    out = loaded.model(input_ids=tokens[:, :-1], output_hidden_states=True, use_cache=False)
    return max(float(loaded.adapter.lm_head(h[:, positions]).abs().max()) for h in out.hidden_states[1:])


if __name__ == "__main__":
    main()

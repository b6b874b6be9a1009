"""Does predicted KL rank single-sublayer drops better than Block Influence and angular distance?

For every single attention and MLP drop of the store's model (SmolLM2 by default), measure
what the drop really costs, one unit at a time (reversible ``drop`` perturbation, the rest
dense):

- generation degradation: 1 − greedy token agreement with the dense model
  (``gen_agreement``, held-out prompts different from the store's), and first divergence;
- multiple-choice change: accuracy drop on ``mc_nextline`` (log-likelihood of the true
  next line) and ``mc_letters`` (lettered prompt), dense minus dropped;

then print the Spearman correlation of each ranking strategy's score (lower = safer) with
each of those, per kind and over all units. Positive = the strategy orders units by real harm.

    prunelens probe --model smollm2-135m --method drop --units attn,mlp --samples 16 --steps 32 \\
        --temperature 0.7,1.0 --locality local,propagated --timing teacher_forced --out runs/bench/probe.zarr
    python bench/strategies.py --store runs/bench/probe.zarr --temperature 1.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

STRATEGIES = ("kl_pred", "kl", "block_influence", "angular", "llm_drop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--locality", default="propagated")
    ap.add_argument("--gen-samples", type=int, default=8)
    ap.add_argument("--gen-steps", type=int, default=24)
    ap.add_argument("--mc-samples", type=int, default=24)
    ap.add_argument("--context-lines", type=int, default=2, help="mc_nextline context (shorter = faster)")
    ap.add_argument("--kinds", default="attn,mlp")
    ap.add_argument("--limit", type=int, default=None, help="Only the first N units (a quick check).")
    ap.add_argument("--out", default=None, help="Write per-unit rows and correlations as JSON here.")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from prunelens.evaluation import run_tasks
    from prunelens.methods import parse_method
    from prunelens.models import load_model
    from prunelens.ranking import load_store, rank_units, store_units
    from prunelens.report import spearman

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    console = Console()
    ds = load_store(args.store)
    model_id = str(ds.attrs["model_id"])
    dense, work = load_model(model_id), load_model(model_id)
    kinds = args.kinds.split(",")
    units = [u for k in kinds for u in store_units(ds, k)][: args.limit]
    names = [u.name for u in units]

    t0 = time.perf_counter()
    scores: dict[str, dict[str, float]] = {}
    for by in STRATEGIES:
        scores[by] = {}
        for k in kinds:
            df = rank_units(ds, method="drop", kind=k, temperature=args.temperature, by=by, locality=args.locality,
                            timing="teacher_forced", loaded=dense)
            scores[by].update(dict(zip(df["unit"], df["score"])))
    t_rank = time.perf_counter() - t0

    tasks = [f"gen_agreement:n_samples={args.gen_samples},steps={args.gen_steps}",
             f"mc_nextline:n_samples={args.mc_samples},context_lines={args.context_lines}",
             f"mc_letters:n_samples={args.mc_samples}"]
    base = run_tasks(dense, tasks[1:])
    drop = parse_method("drop")
    rows = []
    t1 = time.perf_counter()
    for u in tqdm(units, desc="single drops", unit="unit"):
        with drop.perturb(work.adapter, u):
            r = run_tasks(work, tasks, reference=dense)
        rows.append({
            "unit": u.name, "kind": u.kind, "layer": u.layer,
            "gen_degradation": 1.0 - r["gen_agreement"]["token_match"],
            "first_divergence": r["gen_agreement"]["first_divergence"],
            "mc_nextline_drop": base["mc_nextline"]["acc"] - r["mc_nextline"]["acc"],
            "mc_letters_drop": base["mc_letters"]["acc"] - r["mc_letters"]["acc"],
            "letters_mass_drop": base["mc_letters"]["candidate_mass"] - r["mc_letters"]["candidate_mass"],
            **{f"score_{by}": scores[by].get(u.name, float("nan")) for by in STRATEGIES},
        })
    t_truth = time.perf_counter() - t1

    targets = [("gen_degradation", "1 − token agreement"), ("mc_nextline_drop", "MC next-line acc drop"),
               ("mc_letters_drop", "MC letters acc drop"), ("letters_mass_drop", "letters mass drop")]
    groups = [(k, [r for r in rows if r["kind"] == k]) for k in kinds] + [("all", rows)]
    corr: dict[str, dict[str, dict[str, float]]] = {}
    for gname, grows in groups:
        t = Table(title=f"Spearman ρ of strategy score vs real harm · {gname} ({len(grows)} single drops) · "
                        f"T={args.temperature:g}", title_justify="left")
        t.add_column("strategy")
        for _, label in targets:
            t.add_column(label, justify="right")
        corr[gname] = {}
        for by in STRATEGIES:
            s = np.array([r[f"score_{by}"] for r in grows])
            vals = {key: spearman(s, np.array([r[key] for r in grows])) for key, _ in targets}
            corr[gname][by] = vals
            t.add_row(by, *[f"{vals[key]:+.3f}" for key, _ in targets])
        console.print(t)
    console.print(f"dense: mc_nextline acc {base['mc_nextline']['acc']:.3f}, mc_letters acc {base['mc_letters']['acc']:.3f}; "
                  f"rankings {t_rank:.1f} s, ground truth {t_truth:.1f} s for {len(units)} units")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "dense": base, "rows": rows, "spearman": corr},
                                             indent=2))
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

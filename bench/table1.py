"""The paper's Table 1 analogue on SmolLM2-135M: dense vs dropping k attention or k MLP sublayers.

Multiple-choice accuracy (lm-eval style next-line choice, and the lettered format),
perplexity and greedy generation agreement with the dense model, side by side:

    .venv/bin/python bench/table1.py                       # k = 4 and 8, default sample sizes
    .venv/bin/python bench/table1.py --ks 4,8 --samples 50 --rule llm_drop --json table1.json

Dropped layers: ``--rule last`` (default) drops the last k non-final layers (L21-L28 for
k = 8 on 30 layers); any dense ranking strategy name (``llm_drop``, ``block_influence``)
drops the k best-ranked sublayers of each kind instead. Dropping uses
``prunelens.compression.sequential.drop_units`` (a dropped sublayer's output projection is zeroed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

COLUMNS = [  # (task, metric, header, format)
    ("mc_nextline", "acc", "MC acc", "{:.3f}"),
    ("mc_nextline", "acc_stderr", "± se", "{:.3f}"),
    ("mc_nextline", "acc_norm", "MC acc_norm", "{:.3f}"),
    ("mc_letters", "acc", "letters acc", "{:.3f}"),
    ("perplexity", "ppl", "ppl", "{:.2f}"),
    ("gen_agreement", "token_match", "gen match", "{:.3f}"),
    ("gen_agreement", "first_divergence", "1st diverge", "{:.1f}"),
    ("gsm8k", "exact_match", "GSM8K", "{:.3f}"),
]


def choose_units(rule: str, dense, kind: str, k: int) -> list:
    from prunelens.units import Unit

    n = dense.adapter.num_layers
    if k > n - 1:
        raise SystemExit(f"k={k} is too large for {n} layers")
    if rule == "last":
        return [Unit(i, kind) for i in range(n - 1 - k, n - 1)]
    from prunelens.plan.ranking import rank_units

    df = rank_units(None, method="drop", kind=kind, temperature=1.0, by=rule, loaded=dense)
    return sorted(Unit.parse(u) for u in df["unit"].tolist()[:k])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ks", default="4,8", help="numbers of sublayers to drop (comma-separated)")
    ap.add_argument("--kinds", default="attn,mlp")
    ap.add_argument("--rule", default="last", help="'last' or a dense ranking strategy (llm_drop, block_influence)")
    ap.add_argument("--samples", type=int, default=40, help="MC items per MC task")
    ap.add_argument("--letters", action="store_true", help="also the lettered MC format (near chance for 135M)")
    ap.add_argument("--ppl-windows", type=int, default=8)
    ap.add_argument("--gen-prompts", type=int, default=12)
    ap.add_argument("--gen-steps", type=int, default=32)
    ap.add_argument("--gsm8k", type=int, default=0, help="also GSM8K with this many questions (slow; 0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args(argv)

    import torch

    from prunelens.compression.sequential import drop_units
    from prunelens.evaluation.task_runner import run_tasks
    from prunelens.model.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [f"mc_nextline:n_samples={args.samples}", f"perplexity:n_samples={args.ppl_windows}",
             f"gen_agreement:n_samples={args.gen_prompts},steps={args.gen_steps}"]
    if args.letters:
        tasks.insert(1, f"mc_letters:n_samples={args.samples}")
    if args.gsm8k:
        tasks.append(f"gsm8k:n_samples={args.gsm8k}")
    dense = load_model(args.model)
    variants: list[tuple[str, list]] = [("dense", [])]
    for kind in args.kinds.split(","):
        for k in (int(x) for x in args.ks.split(",")):
            variants.append((f"drop {k} {kind}", choose_units(args.rule, dense, kind, k)))

    rows = []
    t_all = time.perf_counter()
    for label, units in variants:
        t0 = time.perf_counter()
        loaded = dense if not units else load_model(args.model)
        if units:
            drop_units(loaded, units)
        results = run_tasks(loaded, tasks, reference=dense, seed=args.seed, progress=True)
        rows.append({"variant": label, "units": [u.name for u in units], "results": results,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{label}: {', '.join(u.name for u in units) or '-'} done in {rows[-1]['seconds']} s", file=sys.stderr)
        del loaded

    _print(rows, args)
    print(f"total {time.perf_counter() - t_all:.0f} s; tasks: {', '.join(tasks)}; rule: {args.rule}; seed {args.seed}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rule": args.rule, "tasks": tasks, "rows": rows}, f, indent=2)
    return 0


def _print(rows: list[dict], args) -> None:
    cols = [c for c in COLUMNS if any(c[0] in r["results"] for r in rows)]
    header = ["variant", "dropped"] + [c[2] for c in cols]
    table = []
    for r in rows:
        dropped = _compact(r["units"])
        table.append([r["variant"], dropped] + [c[3].format(r["results"][c[0]][c[1]]) for c in cols])
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for t in table:
        print(" | ".join(v.ljust(w) for v, w in zip(t, widths)))


def _compact(units: list[str]) -> str:
    """``['L21.attn', ..., 'L28.attn']`` -> ``L21-28.attn`` when consecutive."""
    if not units:
        return "-"
    layers = [int(u.split(".")[0][1:]) for u in units]
    kind = units[0].split(".", 1)[1] if "." in units[0] else ""
    if layers == list(range(layers[0], layers[-1] + 1)) and len({u.split(".", 1)[-1] for u in units}) == 1:
        return f"L{layers[0]}-{layers[-1]}" + (f".{kind}" if kind else "")
    return ",".join(units)


if __name__ == "__main__":
    sys.exit(main())

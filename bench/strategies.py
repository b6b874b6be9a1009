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
    python bench/strategies.py --store runs/bench/probe.zarr --temperature 1.0 --truth runs/bench/truth.json

(``--truth-only --truth FILE`` measures and caches the ground truth first; it needs no store.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

STRATEGIES = ("kl_pred", "kl", "block_influence", "angular", "llm_drop")
# every store signal compared by --signals: variable (and space) -> how to read a per-unit mean (higher = more harm)
SIGNALS = {
    "kl_pred": ("kl_pred", None), "kl": ("kl", None), "1-top1": ("top1_agree", None),
    "1-cos h": ("cos_dev", "embedding"), "1-cos z": ("cos_dev", "logit"), "1-cos p": ("cos_dev", "probability"),
    "1-cos h pred": ("cos_dev_pred", "embedding"), "1-cos p pred": ("cos_dev_pred", "probability"),
    "rel dh": ("rel_norm", "embedding"), "rel dh_perp": ("rel_perp", "embedding"),
    "rel dz_perp": ("rel_perp", "logit"), "var_uniform dz": ("dz_var_uniform", None),
    "var_top5 dz": ("dz_var_top5", None), "var_top10 dz": ("dz_var_top10", None), "L1 dz": ("dz_l1", None),
    "L2 dz": ("dz_l2", None),
}


def signal_table(ds, rows: list[dict], kinds: list[str]) -> list[dict]:
    """Spearman of every store signal (each variable x locality x timing x T) vs the generation ground truth.

    Per unit, the signal is the mean over samples and steps of the ``drop`` cell (``1 - top1_agree``
    for agreement). Targets: 1 - greedy token agreement and (steps - first divergence), over all units.
    """
    from prunelens_store import spearman

    names = [r["unit"] for r in rows]
    deg = np.array([r.get("gen_degradation", np.nan) for r in rows], float)
    early = np.array([r.get("early_divergence", np.nan) for r in rows], float)
    of_kind = {k: [r["kind"] == k for r in rows] for k in kinds}
    out = []
    cell = ds.sel({"method": "drop"}).sel(unit=names)
    for label, (var, space) in SIGNALS.items():
        if var not in cell:
            continue
        da = cell[var]
        if space is not None:
            da = da.sel(space=space)
        for loc in map(str, ds["locality"].values):
            for tim in map(str, ds["timing"].values):
                sub = da.sel({"locality": loc, "timing": tim})
                temps = [float(t) for t in ds["temperature"].values] if "temperature" in sub.dims else [None]
                if label in ("1-cos h", "1-cos z", "1-cos h pred", "rel dh", "rel dh_perp", "rel dz_perp"):
                    temps = temps[:1]  # no temperature dependence: one row
                for t in temps:
                    x = sub.sel(temperature=t) if t is not None else sub
                    v = x.astype("float64").mean(dim=[d for d in x.dims if d != "unit"]).values
                    if var == "top1_agree":
                        v = 1.0 - v
                    out.append({"signal": label, "locality": loc, "timing": tim,
                                "T": "-" if t is None or label.startswith(("1-cos h", "1-cos z", "rel ")) else f"{t:g}",
                                "rho_degradation": spearman(v, deg), "rho_early_divergence": spearman(v, early),
                                **{f"rho_degradation_{k}": spearman(v[of_kind[k]], deg[of_kind[k]]) for k in kinds}})
    out.sort(key=lambda r: -np.nan_to_num(r["rho_degradation"], nan=-9))
    return out


def signal_markdown(table: list[dict], kinds: list[str]) -> str:
    head = "| signal | locality | timing | T | ρ vs 1 − token agreement | ρ vs steps − first divergence | " + \
        " | ".join(f"ρ agreement ({k})" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (6 + len(kinds))]
    for r in table:
        by_kind = " | ".join(f"{r[f'rho_degradation_{k}']:+.3f}" for k in kinds)
        lines.append(f"| {r['signal']} | {r['locality']} | {r['timing']} | {r['T']} | {r['rho_degradation']:+.3f} | "
                     f"{r['rho_early_divergence']:+.3f} | {by_kind} |")
    return "\n".join(lines)


def ground_truth(model_id: str, kinds: list[str], args) -> dict:
    """Per single drop: generation degradation and multiple-choice accuracy drops (cached as JSON)."""
    from tqdm import tqdm

    from prunelens.compression.methods import parse_method
    from prunelens.evaluation.task_runner import run_tasks
    from prunelens.model.loading import load_model

    cache = Path(args.truth) if args.truth else None
    truth: dict = {"model_id": model_id, "rows": [], "seconds": 0.0}
    if cache is not None and cache.is_file():
        truth = json.loads(cache.read_text())
        if truth.get("complete"):
            return truth
    dense, work = load_model(model_id), load_model(model_id)
    units = [u for u in work.adapter.units(kinds)][: args.limit]
    tasks = [f"gen_agreement:n_samples={args.gen_samples},steps={args.gen_steps}"]
    if args.mc_samples:
        tasks.append(f"mc_letters:n_samples={args.mc_samples}")
    if args.nextline:
        tasks.append(f"mc_nextline:n_samples={args.mc_samples},context_lines={args.context_lines}")
    if truth.get("tasks", tasks) != tasks:
        raise SystemExit(f"{cache} was measured with other task settings; delete it or match them")
    truth["tasks"] = tasks
    t0 = time.perf_counter() - truth["seconds"]
    if "dense" not in truth:
        truth["dense"] = run_tasks(dense, tasks[1:]) if len(tasks) > 1 else {}
    base = truth["dense"]
    drop = parse_method("drop")
    done = {r["unit"] for r in truth["rows"]}
    for u in tqdm(units, desc="single drops", unit="unit", initial=len(done)):
        if u.name in done:
            continue
        with drop.perturb(work.adapter, u):
            r = run_tasks(work, tasks, reference=dense)
        row = {"unit": u.name, "kind": u.kind, "layer": u.layer,
               "gen_degradation": 1.0 - r["gen_agreement"]["token_match"],
               "first_divergence": r["gen_agreement"]["first_divergence"]}
        if "mc_letters" in r:
            row["mc_letters_drop"] = base["mc_letters"]["acc"] - r["mc_letters"]["acc"]
            row["letters_mass_drop"] = base["mc_letters"]["candidate_mass"] - r["mc_letters"]["candidate_mass"]
        if args.nextline:
            row["mc_nextline_drop"] = base["mc_nextline"]["acc"] - r["mc_nextline"]["acc"]
        truth["rows"].append(row)
        truth["seconds"] = round(time.perf_counter() - t0, 1)
        if cache is not None:  # after every unit: an interrupted run resumes
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(truth, indent=2))
    truth["complete"] = len(truth["rows"]) == len(units)
    if cache is not None:
        cache.write_text(json.dumps(truth, indent=2))
    return truth


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="Probe store with drop on attn/mlp (needed for the comparison).")
    ap.add_argument("--model", default="smollm2-135m", help="Model for --truth-only (else the store's).")
    ap.add_argument("--truth", default=None, help="Cache of the ground truth (JSON): read if present, else written.")
    ap.add_argument("--truth-only", action="store_true", help="Only measure the ground truth (no store needed).")
    ap.add_argument("--partial", action="store_true",
                    help="Use whatever units the --truth cache holds (no new measurements).")
    ap.add_argument("--temperature", "-T", type=float, default=1.0)
    ap.add_argument("--locality", default="propagated")
    ap.add_argument("--gen-samples", type=int, default=8)
    ap.add_argument("--gen-steps", type=int, default=16)
    ap.add_argument("--mc-samples", type=int, default=16, help="mc_letters items (0: skip multiple choice)")
    ap.add_argument("--nextline", action="store_true", help="Also mc_nextline (4 scored continuations per item: slow).")
    ap.add_argument("--context-lines", type=int, default=2, help="mc_nextline context (shorter = faster)")
    ap.add_argument("--kinds", default="attn,mlp")
    ap.add_argument("--limit", type=int, default=None, help="Only the first N units (a quick check).")
    ap.add_argument("--out", default=None, help="Write per-unit rows and correlations as JSON here.")
    ap.add_argument("--signals", default=None,
                    help="Also rank every store signal (variable x locality x timing x T) by Spearman against the "
                         "generation ground truth; write the table as Markdown to this file.")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    from rich.console import Console

    from prunelens.model.loading import load_model
    from prunelens.plan.ranking import load_store

    console = Console()
    kinds = args.kinds.split(",")
    if args.truth_only:
        truth = ground_truth(args.model, kinds, args)
        console.print(f"ground truth for {len(truth['rows'])} units in {truth['seconds']} s")
        return
    if not args.store:
        raise SystemExit("--store is required (or --truth-only)")
    ds = load_store(args.store)
    model_id = str(ds.attrs["model_id"])
    truth = {"rows": [], "dense": {}, "tasks": [], "seconds": 0}
    if args.truth and (args.partial or Path(args.truth).is_file()):
        truth = json.loads(Path(args.truth).read_text()) if Path(args.truth).is_file() else truth
        if not truth.get("complete") and not args.partial:
            truth = ground_truth(model_id, kinds, args)
    elif args.truth or not args.partial:
        truth = ground_truth(model_id, kinds, args)
    base = truth.get("dense", {})
    measured = {r["unit"]: r for r in truth["rows"]}
    dense = load_model(model_id)
    rows = store_rows(ds, kinds, measured, args)
    t0 = time.perf_counter()
    add_strategy_scores(ds, rows, kinds, dense, args)
    t_rank = time.perf_counter() - t0

    targets = [("store_kl", "store: measured KL"), ("store_top1_disagree", "store: 1 − top-1 agree"),
               ("gen_degradation", "1 − greedy token agreement"), ("early_divergence", "steps − first divergence"),
               ("mc_letters_drop", "MC letters acc drop"), ("letters_mass_drop", "letters mass drop"),
               ("mc_nextline_drop", "MC next-line acc drop")]
    steps = int(truth["tasks"][0].split("steps=")[1].split(",")[0]) if truth["tasks"] else 0
    for r in rows:  # an earlier first divergence is more harm
        if "first_divergence" in r:
            r["early_divergence"] = steps - r["first_divergence"]
    targets = [t for t in targets if any(t[0] in r for r in rows)]
    corr = correlation_tables(console, rows, kinds, targets, args.temperature)
    if args.signals:
        print_signals(console, ds, rows, kinds, args)
    n_gen = sum("gen_degradation" in r for r in rows)
    console.print(f"units: {len(rows)} with store measurements, {n_gen} with measured generation; "
                  f"dense {json.dumps(base)}; "
                  f"rankings {t_rank:.1f} s, ground truth {truth['seconds']} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "dense": base, "rows": rows, "spearman": corr},
                                             indent=2))
        console.print(f"wrote {args.out}")


def store_rows(ds, kinds: list[str], measured: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    """One row per unit: the store's own measurements of its drop, next to the bench's (``measured``)."""
    from prunelens.plan.ranking import store_means, store_units

    units = [u for k in kinds for u in store_units(ds, k)]
    means = store_means(ds, method="drop", temperature=args.temperature, locality=args.locality,
                        timing="teacher_forced", units=units)
    agree = ds["top1_agree"].sel({"method": "drop", "locality": args.locality, "timing": "teacher_forced"})
    agree = agree.sel(unit=[u.name for u in units]).astype("float64").mean(dim=["sample", "step"]).values
    rows = []
    for i, u in enumerate(units):  # the store's own measurements of each dropped model, next to the bench's
        rows.append({"unit": u.name, "kind": u.kind, "layer": u.layer, "store_kl": float(means["kl"][i]),
                     "store_top1_disagree": 1.0 - float(agree[i]), **measured.get(u.name, {})})
    return rows


def add_strategy_scores(ds, rows: list[dict], kinds: list[str], dense, args: argparse.Namespace) -> None:
    """Each strategy's score of each unit, as ``score_<strategy>`` in its row (NaN where it gives none)."""
    from prunelens.plan.ranking import rank_units

    for by in STRATEGIES:
        scores: dict[str, float] = {}
        for k in kinds:
            df = rank_units(ds, method="drop", kind=k, temperature=args.temperature, by=by, locality=args.locality,
                            timing="teacher_forced", loaded=dense)
            scores.update(dict(zip(df["unit"], df["score"])))
        for r in rows:
            r[f"score_{by}"] = scores.get(r["unit"], float("nan"))


def correlation_tables(console, rows: list[dict], kinds: list[str], targets: list[tuple[str, str]],
                       temperature: float) -> dict[str, dict[str, dict[str, float]]]:
    """Print, per unit kind and over all units, each strategy's Spearman ρ against every harm target; return them."""
    from rich.table import Table

    from prunelens_store import spearman

    groups = [(k, [r for r in rows if r["kind"] == k]) for k in kinds] + [("all", rows)]
    corr: dict[str, dict[str, dict[str, float]]] = {}
    for gname, grows in groups:
        t = Table(title=f"Spearman ρ of strategy score vs real harm · {gname} ({len(grows)} single drops) · "
                        f"T={temperature:g}", title_justify="left")
        t.add_column("strategy")
        for _, label in targets:
            t.add_column(label, justify="right")
        corr[gname] = {}
        for by in STRATEGIES:
            s = np.array([r[f"score_{by}"] for r in grows])
            vals = {key: spearman(s, np.array([r.get(key, np.nan) for r in grows])) for key, _ in targets}
            corr[gname][by] = vals
            t.add_row(by, *[f"{vals[key]:+.3f}" for key, _ in targets])
        console.print(t)
    return corr


def print_signals(console, ds, rows: list[dict], kinds: list[str], args: argparse.Namespace) -> None:
    """Write the every-signal table as Markdown to ``args.signals``, print it, and the best signal beside kl_pred."""
    table = signal_table(ds, rows, kinds)
    md = signal_markdown(table, kinds)
    Path(args.signals).parent.mkdir(parents=True, exist_ok=True)
    Path(args.signals).write_text(md + "\n")
    console.print(md)
    best = table[0]
    kp = [r for r in table if r["signal"] == "kl_pred" and r["locality"] == args.locality
          and r["timing"] == "teacher_forced" and r["T"] == f"{args.temperature:g}"]
    console.print(f"best signal vs 1 − token agreement: {best['signal']} {best['locality']}/{best['timing']} "
                  f"T={best['T']} ρ={best['rho_degradation']:+.3f}; kl_pred ({args.locality}, teacher_forced, "
                  f"T={args.temperature:g}) ρ={kp[0]['rho_degradation']:+.3f}" if kp else "")


if __name__ == "__main__":
    main()

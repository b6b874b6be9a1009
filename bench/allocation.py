"""Budgeted compression plans on a real model: uniform vs OWL vs predicted-KL knapsack.

On SmolLM2-135M, every condition compresses the dense model with one plan (sequentially,
layer by layer, on calibration text) and evaluates it on held-out Shakespeare that neither
the calibration nor the probe prompts ever saw (``prunelens.text.corpora``: every fifth work is held
out; the probe prompts are drawn from the *probe* split, disjoint from both):

- ``ppl``: held-out perplexity (``--eval N×L`` windows);
- ``agree``: greedy-token agreement with the dense model over 32 free-running steps
  (token match rate; ``div`` = mean first-divergence step), held-out prompts;
- ``KL``: measured KL(p_dense ‖ q) at T=1, mean over every held-out eval position;
- ``pred ΣKL``: the plan's summed single-unit predicted KL (store, T, propagated,
  teacher-forced) and ``meas KL@store``: the measured KL of the applied plan on the
  store's own prompts at the same T; ``ratio`` = measured / predicted.

Conditions (``--only`` picks some by name prefix):

- sparsity: Wanda at 50/60/70 %, SparseGPT at 60/70 % of decoder-linear weights, each with
  ``uniform``, ``owl`` (M=5, λ=0.08) and ``knapsack`` (predicted KL, exact MCKP over block
  levels from the probe store);
- bits: RTN at uniform 4 and 3 bits vs knapsack over ``rtn:bits=2,3,4,8`` at an average of
  3.5 bits; the same with GPTQ (3/4 uniform, knapsack over 2,3,4);
- remedies (``--remedies``): knapsack at T=0.7; knapsack with ``band=0.1`` (levels within
  target ± 0.1, like OWL's λ); ``iterative`` (2 rounds: the first half of the layers
  compressed for real, the rest re-probed on that model); knapsack on local predictions
  (when the probe ran ``--probe-locality local,propagated``).

Everything is cached in ``OUT/results.json`` after each condition (rerun to resume; a
changed setting refuses to mix). ``--llmc-dir DIR`` evaluates llm-compressor checkpoints
written by ``bench/llmc_compare.py`` with the same evaluation. ``--table`` prints the tables
from the cache without computing.

    python bench/allocation.py --out bench/out/allocation            # everything (resumable)
    python bench/allocation.py --out bench/out/allocation --only wanda60,wanda70
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "smollm2-135m"  # --model
DTYPE = "float32"  # --dtype
T_EVAL = 1.0
SPARSITY = [("wanda", 0.6), ("wanda", 0.7), ("sparsegpt", 0.6), ("sparsegpt", 0.7), ("wanda", 0.5)]  # run order
LEVELS = {"wanda": "0.5,0.6,0.7,0.8,0.9", "sparsegpt": "0.5,0.6,0.7,0.8,0.9",
          "rtn": "2,3,4,8", "gptq": "2,3,4"}
MILD_SPARSITY = [("wanda", 0.3), ("wanda", 0.4)]  # --mild: budgets where generation survives
MILD_LEVELS = "0.1,0.2,0.3,0.4,0.5,0.6"


def conditions(remedies: bool, local: bool = False, search: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every condition: name, allocator, method family, budget, allocation temperature, locality; with
    ``search`` (the search allocator's parameters) also a ``search`` row at every sparsity and the 3.5-bit budget."""
    out = []
    for fam, s in SPARSITY:
        tag = f"{fam}{round(s * 100)}"
        for alloc in ("uniform", "owl", "knapsack"):
            out.append({"name": f"{tag}-{alloc}", "family": fam, "allocator": alloc, "budget": f"sparsity={s}"})
        if search is not None:
            out.append({"name": f"{tag}-search", "family": fam, "allocator": "search", "budget": f"sparsity={s}",
                        "params": dict(search)})
        if remedies and s >= 0.6:
            out.append({"name": f"{tag}-knapsack-T0.7", "family": fam, "allocator": "knapsack",
                        "budget": f"sparsity={s}", "temperature": 0.7})
            out.append({"name": f"{tag}-knapsack-band0.1", "family": fam, "allocator": "knapsack",
                        "budget": f"sparsity={s}", "params": {"band": 0.1}})
            out.append({"name": f"{tag}-iterative", "family": fam, "allocator": "iterative",
                        "budget": f"sparsity={s}", "params": {"rounds": 2}})
            if local:
                out.append({"name": f"{tag}-knapsack-local", "family": fam, "allocator": "knapsack",
                            "budget": f"sparsity={s}", "locality": "local"})
    for fam, bits in (("rtn", (4, 3)), ("gptq", (4, 3))):
        for b in bits:
            out.append({"name": f"{fam}-uniform{b}", "family": fam, "allocator": "uniform", "budget": f"bits={b}"})
        out.append({"name": f"{fam}-knapsack3.5", "family": fam, "allocator": "knapsack", "budget": "bits=3.5"})
        if search is not None:
            out.append({"name": f"{fam}-search3.5", "family": fam, "allocator": "search", "budget": "bits=3.5",
                        "params": dict(search)})
    return out


# -- data ------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    n, _, length = text.partition("x")
    return int(n), int(length)


def prepare(out: Path, args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    """Token ids of calibration, evaluation, generation and probe prompts (saved for llmc_compare.py)."""
    from prunelens.text.corpora import token_windows

    cn, cl = parse_size(args.calib)
    en, el = parse_size(args.eval)
    if args.eval_source == "gsm8k-gpqa":  # another source than calibration, probe and search (half each)
        from evopress_compare import eval_texts, text_windows

        texts = eval_texts()
        eval_ids = text_windows(tokenizer, texts["gsm8k"], en // 2, el) + text_windows(
            tokenizer, texts["gpqa"], en - en // 2, el)
    else:
        eval_ids = token_windows(tokenizer, en, el, split="heldout", seed=1).tolist()
    ids = {
        "calib": token_windows(tokenizer, cn, cl, split="calib", seed=0).tolist(),  # = prunelens' default windows
        "eval": eval_ids,
        "gen": token_windows(tokenizer, args.gen, 32, split="heldout", seed=2).tolist(),
        "probe": token_windows(tokenizer, args.probe_samples, 32, split="probe", seed=3).tolist(),
    }
    (out / "ids.json").write_text(json.dumps(ids))
    with open(out / "probe_prompts.jsonl", "w") as f:
        for row in ids["probe"]:
            f.write(json.dumps({"ids": row}) + "\n")
    return ids


# -- evaluation ------------------------------------------------------------------------------
class Evaluator:
    """Dense references computed once; ``evaluate(model)`` gives every metric of one compressed model."""

    def __init__(self, dense: Any, ids: dict[str, Any], batch: int = 4, cache: Path | None = None):
        import torch

        from prunelens.evaluation import scoring as T

        self.tok = dense.tokenizer
        self.batch = batch
        self.eval_ids = torch.as_tensor(np.asarray(ids["eval"], dtype=np.int64))
        self.gen_prompts = ids["gen"]
        self.pad = T.pad_id_of(self.tok, dense.model)
        if cache is not None and cache.is_file():  # dense references of the same ids (a rerun resumes fast)
            saved = torch.load(cache, weights_only=True)
            self.dense_logp, self.dense_gen = saved["logp"], saved["gen"]
        else:
            self.dense_logp = [lp for lp, _ in self._logp(dense.model)]
            self.dense_gen = self._generate(dense.model)
            if cache is not None:
                torch.save({"logp": self.dense_logp, "gen": self.dense_gen}, cache)
        self.dense_model = dense.model
        self.replays: dict[str, Any] = {}

    def add_store(self, family: str, ds: Any) -> None:
        """The store's prompts (probe split), dense logits cached once."""
        from prunelens.plan.apply import PromptReplay

        if family not in self.replays:
            self.replays[family] = PromptReplay(ds, self.dense_model)

    def _logp(self, model: Any):
        import torch

        with torch.no_grad():
            for s in range(0, len(self.eval_ids), self.batch):
                x = self.eval_ids[s : s + self.batch]
                logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
                yield torch.log_softmax(logits / T_EVAL, dim=-1), x[:, 1:]

    def _generate(self, model: Any) -> list[list[int]]:
        from prunelens.evaluation import scoring as T

        return T.greedy_generate(model, self.gen_prompts, 32, self.pad, None, batch_size=16)

    def evaluate(self, model: Any, family: str | None, temperature: float) -> dict[str, float]:
        from prunelens.evaluation import scoring as T

        t0 = time.time()
        nll_w: list[float] = []  # per window: mean next-token NLL and KL (equal-length windows)
        kl_w: list[float] = []
        for dense_lp, (lp, target) in zip(self.dense_logp, self._logp(model)):
            nll_w += (-lp.gather(-1, target[..., None]).squeeze(-1)).mean(dim=1).tolist()
            kl_w += (dense_lp.exp() * (dense_lp - lp)).sum(-1).mean(dim=1).tolist()
        per_prompt = [T.agreement([g], [d], 32) for g, d in zip(self._generate(model), self.dense_gen)]
        agree = [r["token_match"] for r in per_prompt]  # each over 32 steps: their mean is the overall rate
        first = [r["first_divergence"] for r in per_prompt]
        row = {"ppl": math.exp(float(np.mean(nll_w))), "kl": float(np.mean(kl_w)), "agree": sum(agree) / len(agree),
               "first_div": sum(first) / len(first), "agree_per_prompt": agree, "first_div_per_prompt": first,
               "nll_per_window": nll_w, "kl_per_window": kl_w}
        if family in self.replays:
            m = self.replays[family].compare(model, temperature)
            row.update(kl_store=m["kl"], top1_store=m["top1_agree"])
        row["eval_seconds"] = round(time.time() - t0, 1)
        return row

    def dense_row(self) -> dict[str, float]:
        nll, count = 0.0, 0
        for s, lp in zip(range(0, len(self.eval_ids), self.batch), self.dense_logp):
            target = self.eval_ids[s : s + self.batch, 1:]
            nll -= float(lp.gather(-1, target[..., None]).sum())
            count += target.numel()
        return {"ppl": math.exp(nll / count), "kl": 0.0, "agree": 1.0, "first_div": 32.0}


# -- stores ----------------------------------------------------------------------------------
def probe_store(out: Path, family: str, args: argparse.Namespace) -> Path:
    """Probe every block at every level of ``family`` (resumable: prunelens probe resumes its store)."""
    cn, cl = parse_size(args.calib)
    store = out / f"store-{family}.zarr"
    cmd = [sys.executable, "-m", "prunelens", "probe", "--model", MODEL, "--dtype", DTYPE, "--method", f"{family}:"
           + ("sparsity=" if family in ("wanda", "sparsegpt") else "bits=") + LEVELS[family],
           "--units", args.units, "--samples", str(args.probe_samples), "--steps", str(args.probe_steps),
           "--prompt-len", "32",
           "--temperature", "0.7,1.0", "--locality", args.probe_locality, "--timing", "teacher_forced",
           "--prompts", str(out / "probe_prompts.jsonl"), "--calib-samples", str(cn), "--calib-len", str(cl),
           "--batch-size", "8", "--no-compile", "--out", str(store), "--quiet"]
    t0 = time.time()
    print(f"[probe] {family}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    print(f"[probe] {family} done in {time.time() - t0:.0f}s", flush=True)
    return store


def open_store(path: Path) -> Any:
    from prunelens.plan.ranking import load_store

    return load_store(str(path))


# -- one condition -------------------------------------------------------------------------------
def run_condition(cond: dict[str, Any], ds: Any, ids: dict[str, Any], ev: Evaluator, out: Path) -> dict[str, Any]:
    import torch

    from prunelens.compression.methods import parse_method
    from prunelens.compression.per_unit import compress_mixed, linear_zeros
    from prunelens.model.loading import load_model
    from prunelens.plan.allocation import allocate_plan

    t0 = time.time()
    work = load_model(MODEL, dtype=DTYPE)
    calib = torch.as_tensor(np.asarray(ids["calib"], dtype=np.int64))
    temp = float(cond.get("temperature", T_EVAL))
    kw: dict[str, Any] = dict(cond.get("params", {}))
    if cond["allocator"] in ("owl", "iterative", "search"):  # the same calibration windows as the compression
        kw.update(calib_samples=calib.shape[0], calib_len=calib.shape[1])
    plan = allocate_plan(ds, allocator=cond["allocator"],
                         budget=cond["budget"], temperature=temp, methods=[cond["family"]], kind="block",
                         locality=cond.get("locality", "propagated"), loaded=work, calib_ids=calib, **kw)
    plan.save(out / "plans" / f"{cond['name']}.json")
    try:  # the same plan for llm-compressor (bench/llmc_compare.py runs it there)
        from prunelens.plan.llmcompressor_recipe import write_recipe

        write_recipe(plan, str(out / "plans" / f"{cond['name']}.recipe.yaml"), adapter=work.adapter)
    except Exception as exc:  # noqa: BLE001 - the experiment goes on without the recipe
        print(f"[recipe] {cond['name']}: {exc}", flush=True)
    t_alloc = time.time() - t0
    summary = compress_mixed(work, [(u, parse_method(s)) for u, s in plan.unit_methods()], calib_ids=calib,
                             progress=False)
    zeros, total = linear_zeros(work.adapter)
    t_apply = time.time() - t0 - t_alloc
    row = ev.evaluate(work.model, cond["family"], T_EVAL)
    pred = _predicted_at(plan, ds, T_EVAL)
    values = [parse_method(s).values for _, s in plan.unit_methods()]
    levels = [v.get("sparsity", v.get("bits")) for v in values]
    row.update({
        "allocator": cond["allocator"], "family": cond["family"], "budget": cond["budget"],
        "alloc_temperature": temp, "locality": cond.get("locality", "propagated"),
        "achieved": plan.allocation.get("achieved"), "zero_fraction": zeros / total,
        "pred_sum_kl": pred, "ratio": (row.get("kl_store", math.nan) / pred) if pred else None,
        "levels": [None if v is None else float(v) for v in levels], "units": [u.name for u, _ in plan.unit_methods()],
        "gap": plan.allocation.get("gap"), "seconds_alloc": round(t_alloc, 1), "seconds_apply": round(t_apply, 1),
        "seconds_compress": summary.get("seconds"),
    })
    if cond["allocator"] == "search":
        info = plan.allocation
        row.update({"search_cost": info["search_cost"], "fitness": info["fitness"],
                    "seed_fitness": info["seed"]["fitness"], "fitness_trace": info["fitness_trace"]})
    return row


def _predicted_at(plan: Any, ds: Any, temperature: float) -> float | None:
    """Σ single-unit predicted KL of the plan's (unit, spec) pairs at ``temperature`` (propagated,
    teacher-forced); None when a pair was not probed (e.g. OWL's off-grid levels)."""
    from prunelens.compression.methods import match_spec
    from prunelens.plan.ranking import store_means

    if ds is None:
        return None
    labels = [str(v) for v in ds["method"].values]
    total = 0.0
    for u, spec in plan.unit_methods():
        lab = match_spec(spec, labels)
        if lab is None:
            return None
        v = float(store_means(ds, method=lab, temperature=temperature, locality="propagated", timing="teacher_forced",
                              units=[u])["kl_pred"][0])
        if not math.isfinite(v):
            return None
        total += v
    return total


# -- tables --------------------------------------------------------------------------------------
def fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def bootstrap_ci(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(reps, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def agreement_table(res: dict[str, Any]) -> list[str]:
    """Generation agreement per condition with 95 % bootstrap CIs over prompts, and each condition's paired
    difference to the same budget's uniform plan, or for a bit budget its knapsack (prompt by prompt)."""
    rows = {k: r for k, r in res.get("conditions", {}).items() if r.get("agree_per_prompt")}
    if not rows:
        return []
    lines = ["", f"Generation over {len(next(iter(rows.values()))['agree_per_prompt'])} held-out prompts "
             "(95 % bootstrap CIs over prompts; Δ = paired difference to the budget's uniform plan, for a bit "
             "budget to its knapsack):", "",
             "| condition | agree@32 [CI] | first divergence [CI] | Δ agree vs uniform [CI] | Δ first div [CI] |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        ref = budget_reference(name, rows, "knapsack" if name.endswith("3.5") else "uniform")
        base = rows.get(ref) if ref else None
        cells = [name]
        for key in ("agree_per_prompt", "first_div_per_prompt"):
            lo, hi = bootstrap_ci(r[key])
            cells.append(f"{sum(r[key]) / len(r[key]):.3f} [{lo:.3f}, {hi:.3f}]")
        for key in ("agree_per_prompt", "first_div_per_prompt"):
            if base is None:
                cells.append("–")
                continue
            diff = [a - b for a, b in zip(r[key], base[key])]
            lo, hi = bootstrap_ci(diff)
            cells.append(f"{sum(diff) / len(diff):+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_ppl_ratio(a: list[float], b: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Perplexity ratio a/b of equal-length windows (exp of the mean NLL difference) and its 95 % paired bootstrap
    interval over windows."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(reps, len(d)))].mean(axis=1)
    return float(math.exp(d.mean())), float(math.exp(np.percentile(means, 2.5))), float(
        math.exp(np.percentile(means, 97.5)))


def budget_reference(name: str, rows: dict[str, Any], kind: str) -> str | None:
    """The same budget's ``kind`` row (``knapsack`` or ``uniform``): wanda60-search -> wanda60-knapsack,
    rtn-search3.5 -> rtn-knapsack3.5 (bit budgets have no uniform plan at 3.5 bits)."""
    fam, _, rest = name.partition("-")
    ref = f"{fam}-{kind}3.5" if rest.endswith("3.5") else f"{fam}-{kind}"
    return ref if ref in rows and ref != name else None


def window_table(res: dict[str, Any]) -> list[str]:
    """Perplexity and KL per condition with 95 % bootstrap CIs over evaluation windows, and the paired perplexity
    ratio to the same budget's knapsack and uniform plans."""
    rows = {k: r for k, r in res.get("conditions", {}).items() if r.get("nll_per_window")}
    if not rows:
        return []
    lines = ["", f"Held-out perplexity and KL over {len(next(iter(rows.values()))['nll_per_window'])} windows "
             "(95 % bootstrap CIs over windows; ratios paired window by window):", "",
             "| condition | ppl [CI] | KL [CI] | ppl / knapsack [CI] | ppl / uniform [CI] |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        nll, kl = np.asarray(r["nll_per_window"]), r["kl_per_window"]
        lo, hi = bootstrap_ci(list(nll))
        klo, khi = bootstrap_ci(kl)
        cells = [name, f"{math.exp(nll.mean()):.2f} [{math.exp(lo):.2f}, {math.exp(hi):.2f}]",
                 f"{float(np.mean(kl)):.3f} [{klo:.3f}, {khi:.3f}]"]
        for kind in ("knapsack", "uniform"):
            ref = budget_reference(name, rows, kind)
            if ref is None:
                cells.append("–")
                continue
            ratio, rlo, rhi = paired_ppl_ratio(r["nll_per_window"], rows[ref]["nll_per_window"])
            cells.append(f"{ratio:.3f} [{rlo:.3f}, {rhi:.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    searched = {k: r for k, r in rows.items() if r.get("search_cost")}
    if searched:
        lines += ["", "| search row | fitness: knapsack seed → search | forward tokens | variants | seconds |",
                  "|---|---|---:|---:|---:|"]
        for name, r in searched.items():
            c = r["search_cost"]
            lines.append(f"| {name} | {r['seed_fitness']:.4f} → {r['fitness']:.4f} | {c.get('tokens', 0):,} | "
                         f"{c.get('variants_built', 0)} | {c.get('seconds_total', 0):.0f} |")
    return lines


def print_tables(res: dict[str, Any]) -> str:
    lines = []
    d = res.get("dense", {})
    lines.append(f"dense: ppl {fmt(d.get('ppl'), 2)}   (setup: {json.dumps(res.get('setup', {}))})")
    lines.append("")
    lines.append("| condition | achieved | zeros | ppl | agree@32 | first div | KL held-out | pred ΣKL "
                 "| meas KL@store | ratio |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in res.get("conditions", {}).items():
        lines.append(f"| {name} | {fmt(r.get('achieved'), 3)} | {fmt(r.get('zero_fraction'), 3)} | "
                     f"{fmt(r['ppl'], 2)} | {fmt(r['agree'], 3)} | {fmt(r['first_div'], 1)} | {fmt(r['kl'], 3)} | "
                     f"{fmt(r.get('pred_sum_kl'), 3)} | {fmt(r.get('kl_store'), 3)} | {fmt(r.get('ratio'), 2)} |")
    lines += window_table(res)
    lines += agreement_table(res)
    if res.get("llmc"):
        lines.append("")
        lines.append("llm-compressor's own implementation (bench/llmc_compare.py), same evaluation:")
        lines.append("")
        lines.append("| condition | zeros | ppl | agree@32 | first div | KL held-out | ours: ppl | ppl ours/llmc |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, r in res["llmc"].items():
            ours = res.get("conditions", {}).get(r.get("ours", ""), {})
            ratio = ours.get("ppl") / r["ppl"] if ours.get("ppl") else None
            lines.append(f"| {name} | {fmt(r.get('zero_fraction'), 3)} | {fmt(r['ppl'], 2)} | {fmt(r['agree'], 3)} | "
                         f"{fmt(r['first_div'], 1)} | {fmt(r['kl'], 3)} | {fmt(ours.get('ppl'), 2)} | "
                         f"{fmt(ratio, 3)} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def merge_results(res: dict[str, Any], other: dict[str, Any], where: str) -> dict[str, Any]:
    """``res`` with ``other``'s conditions and llm-compressor rows added (``--table`` orders the rows)."""
    if other.get("setup") != res.get("setup"):
        raise SystemExit(f"{where} was made with other settings: {other.get('setup')}")
    return {**res, "conditions": {**other.get("conditions", {}), **res.get("conditions", {})},
            "llmc": {**other.get("llmc", {}), **res.get("llmc", {})}}


def condition_order(name: str) -> tuple[int, int, str]:
    """Tables list conditions by budget, then allocator (uniform, OWL, knapsack, search, remedies)."""
    families = ["wanda30", "wanda40", "wanda50", "wanda60", "wanda70", "sparsegpt60", "sparsegpt70", "rtn", "gptq"]
    kinds = ["uniform", "uniform4", "uniform3", "owl", "knapsack", "knapsack3.5", "search", "search3.5",
             "knapsack-T0.7", "knapsack-band0.1", "iterative", "knapsack-local"]
    fam, _, kind = name.partition("-")
    return (families.index(fam) if fam in families else 99, kinds.index(kind) if kind in kinds else 99, name)


# -- main ----------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/out/allocation")
    ap.add_argument("--calib", default="16x128", help="calibration windows NxLEN (split=calib, seed 0)")
    ap.add_argument("--eval", default="4x256", help="held-out perplexity/KL windows NxLEN (seed 1)")
    ap.add_argument("--gen", type=int, default=8, help="held-out prompts for greedy agreement (32 + 32 tokens)")
    ap.add_argument("--probe-samples", type=int, default=2, help="probe prompts (probe split, seed 3)")
    ap.add_argument("--probe-steps", type=int, default=16, help="teacher-forced steps per probe prompt")
    ap.add_argument("--probe-locality", default="propagated", help="local and/or propagated (local: --remedies "
                    "adds a knapsack on local predictions)")
    ap.add_argument("--units", default="block", help="units the probe (and so the knapsack) covers")
    ap.add_argument("--only", default="", help="comma-separated name prefixes of conditions to run, in this order")
    ap.add_argument("--remedies", action="store_true", help="also knapsack at T=0.7 and on local predictions")
    ap.add_argument("--llmc-dir", default=None, help="evaluate llm-compressor checkpoints under this folder")
    ap.add_argument("--table", action="store_true", help="print the cached tables and exit")
    ap.add_argument("--merge", default="", help="with --table: also the rows of these OUT folders (comma-separated; "
                    "the same settings, e.g. remedies run in a second process)")
    ap.add_argument("--baselines-without-store", action="store_true",
                    help="run uniform/owl rows without probing the store first "
                         "(their pred ΣKL and KL@store stay empty)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default=MODEL, help="model spec (alias, folder or .gguf)")
    ap.add_argument("--dtype", default=DTYPE, help="dtype of every model (probe, compression, evaluation)")
    ap.add_argument("--eval-source", choices=["shakespeare", "gsm8k-gpqa"], default="shakespeare",
                    help="held-out windows: the Shakespeare held-out split, or half GSM8K and half GPQA text "
                         "(another source than calibration, probe and search)")
    ap.add_argument("--sparsities", default="", help="FAMILY=S1,S2,... instead of the default sparsity budgets "
                    "(e.g. wanda=0.3,0.4,0.5,0.6,0.7)")
    ap.add_argument("--levels", action="append", default=[], help="FAMILY=L1,L2,... probe levels (repeatable)")
    ap.add_argument("--search", action="store_true", help="also a search-allocator row at every budget")
    ap.add_argument("--search-params", default="generations=8,offspring=6,survivors=2,tokens=128,windows=4,"
                    "window_len=128", help="the search allocator's parameters (key=value,...)")
    ap.add_argument("--mild", action="store_true",
                    help=f"Wanda at 30/40 %% instead, over levels {MILD_LEVELS} (use its own --out)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    global MODEL, DTYPE
    MODEL, DTYPE = args.model, args.dtype
    if args.mild:
        SPARSITY[:] = MILD_SPARSITY
        LEVELS["wanda"] = MILD_LEVELS
    if args.sparsities:
        fam, _, vals = args.sparsities.partition("=")
        SPARSITY[:] = [(fam, float(v)) for v in vals.split(",")]
    for item in args.levels:
        fam, _, vals = item.partition("=")
        LEVELS[fam] = vals
    out = Path(args.out)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    cache = out / "results.json"
    res: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    if args.table:
        for extra in filter(None, args.merge.split(",")):
            res = merge_results(res, json.loads((Path(extra) / "results.json").read_text()), extra)
        conds = res.get("conditions", {})
        res["conditions"] = {k: conds[k] for k in sorted(conds, key=condition_order)}
        (out / "tables.md").write_text(print_tables(res) + "\n")
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = {"model": MODEL, "calib": args.calib, "eval": args.eval, "gen": args.gen,
             "probe_samples": args.probe_samples, "probe_steps": args.probe_steps,
             "probe_locality": args.probe_locality, "units": args.units, **({"mild": True} if args.mild else {}),
             **({"dtype": DTYPE} if DTYPE != "float32" else {}),
             **({"eval_source": args.eval_source} if args.eval_source != "shakespeare" else {}),
             **({"sparsities": args.sparsities} if args.sparsities else {}),
             **({"levels": args.levels} if args.levels else {})}
    if res.get("setup", setup) != setup:
        raise SystemExit(f"{cache} was made with {res['setup']}; use another --out or the same settings")
    res["setup"] = setup

    def save() -> None:
        cache.write_text(json.dumps(res, indent=1))

    from prunelens.model.loading import load_model

    dense = load_model(MODEL, dtype=DTYPE)
    ids = prepare(out, args, dense.tokenizer)
    search = None
    if args.search:
        from prunelens.params import spec_items

        search = dict(spec_items("search:" + args.search_params)[1])
        search.setdefault("cache", str(out / "variants"))
        search.setdefault("progress", "false")
    every = conditions(args.remedies, "local" in args.probe_locality, search)
    prefixes = [p for p in args.only.split(",") if p] or [""]
    wanted = []  # in --only's order
    for p in prefixes:
        wanted += [c for c in every if c["name"].startswith(p) and c not in wanted]
    stores: dict[str, Any] = {}
    t0 = time.time()
    ev = Evaluator(dense, ids, cache=out / "dense_refs.pt")
    print(f"[eval] dense references in {time.time() - t0:.0f}s", flush=True)
    if "dense" not in res:
        res["dense"] = ev.dense_row()
    res.setdefault("conditions", {})
    save()
    if args.llmc_dir:
        res.setdefault("llmc", {})
        from prunelens.compression.per_unit import linear_zeros

        for ckpt in sorted(Path(args.llmc_dir).iterdir()):
            meta = ckpt / "llmc_meta.json"
            if not meta.is_file() or ckpt.name in res["llmc"]:
                continue
            info = json.loads(meta.read_text())
            m = load_model(str(ckpt))
            row = ev.evaluate(m.model, None, T_EVAL)
            z, t = linear_zeros(m.adapter)
            row.update(zero_fraction=z / t, **info)
            res["llmc"][ckpt.name] = row
            save()
            print(f"[llmc] {ckpt.name}: ppl {row['ppl']:.2f} agree {row['agree']:.3f}", flush=True)
    for cond in wanted:
        if cond["name"] in res["conditions"]:
            continue
        fam = cond["family"]
        if args.baselines_without_store and cond["allocator"] in ("uniform", "owl"):
            pass  # no predicted ΣKL / KL on the store's prompts for this row
        elif fam not in stores:  # probed when first needed (the store resumes if interrupted)
            stores[fam] = open_store(probe_store(out, fam, args))
            ev.add_store(fam, stores[fam])
        print(f"[run] {cond['name']} ...", flush=True)
        row = run_condition(cond, stores.get(cond["family"]), ids, ev, out)
        res["conditions"][cond["name"]] = row
        save()
        print(f"[run] {cond['name']}: ppl {row['ppl']:.2f} agree {row['agree']:.3f} KL {row['kl']:.3f} "
              f"pred {fmt(row['pred_sum_kl'])} meas@store {fmt(row.get('kl_store'))} "
              f"({row['seconds_alloc']}+{row['seconds_apply']}+{row['eval_seconds']}s)", flush=True)
    (out / "tables.md").write_text(print_tables(res) + "\n")


if __name__ == "__main__":
    main()

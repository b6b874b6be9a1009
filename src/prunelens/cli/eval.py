"""``prunelens eval``: run evaluation tasks on a model or an applied checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

DEFAULT_TASKS = "perplexity,mc_nextline,mc_letters"


@click.command("eval")
@click.argument("model", required=False)
@click.option("--tasks", "task_list", default=None,
              help=f"Comma-separated tasks, each optionally NAME:k=v (default: {DEFAULT_TASKS}, plus gen_agreement "
                   "with --reference). See --list.")
@click.option("--reference", default=None, help="Dense model to compare against (needed by gen_agreement).")
@click.option("--samples", type=int, default=None, help="Items per task (n_samples), overriding each task's default.")
@click.option("--seed", type=int, default=None, help="Sampling seed for every task.")
@click.option("--batch-size", type=int, default=None, help="Sequences per forward pass for every task.")
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16, float16 or auto.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results (and run details) to this JSON file; '-' prints JSON only.")
@click.option("--list", "list_only", is_flag=True, help="List the available tasks and their parameters, then exit.")
def command(model: str | None, task_list: str | None, reference: str | None, samples: int | None, seed: int | None,
            batch_size: int | None, dtype: str, device: str, threads: int | None, json_path: str | None, list_only: bool) -> None:
    """Evaluate MODEL (a bundled alias, a checkpoint directory or a .gguf file) on offline tasks.

    \b
    Examples:
      prunelens eval smollm2-135m --threads 1
      prunelens eval out/pruned --reference smollm2-135m --tasks perplexity,mc_nextline,gen_agreement
      prunelens eval smollm2-135m --tasks gsm8k:n_samples=10,max_new_tokens=128 --json gsm.json
    """
    from ..evaluation import split_task_list, task_registry

    if list_only:
        _print_tasks(task_registry())
        return
    from ..errors import PrunelensError
    from ..evaluation import build_tasks, run_tasks
    from ..models import load_model

    if not model:
        raise PrunelensError("name a model to evaluate (a bundled alias such as smollm2-135m, or a checkpoint directory)")

    specs = split_task_list(task_list or DEFAULT_TASKS + (",gen_agreement" if reference and not task_list else ""))
    params = {"n_samples": samples, "seed": seed, "batch_size": batch_size}
    tasks = build_tasks(specs, **params)  # validate names and parameters before loading anything
    needs = [t.name for t in tasks if t.needs_reference]
    if needs and not reference:
        raise PrunelensError(f"{', '.join(needs)} compares against the dense model: add --reference MODEL")
    if threads:
        import torch

        torch.set_num_threads(threads)
    loaded = load_model(model, dtype=dtype, device=device)
    ref = load_model(reference, dtype=dtype, device=device) if reference else None
    if ref is not None and ref.config_hash != loaded.config_hash:
        click.echo(f"note: {reference} and {model} have different configs (e.g. dropped layers); "
                   "comparing outputs only", err=True)
    timings: dict[str, float] = {}
    results = run_tasks(loaded, tasks, reference=ref, progress=True, timings=timings)
    record = {"model": model, "config_hash": loaded.config_hash, "reference": reference, "dtype": dtype,
              "tasks": {t.name: t.values for t in tasks}, "seconds": {k: round(v, 2) for k, v in timings.items()},
              "results": results}
    if json_path == "-":
        click.echo(json.dumps(record, indent=2))
        return
    _print_results(model, results, timings)
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=2))
        click.echo(f"wrote {json_path}")


def _print_results(model: str, results: dict[str, dict[str, float]], timings: dict[str, float]) -> None:
    from ..console import make_console
    from rich.table import Table

    table = Table("task", "metric", "value", "seconds", title=f"prunelens eval: {model}")
    for task, metrics in results.items():
        for i, (metric, value) in enumerate(metrics.items()):
            shown = f"{value:.0f}" if metric == "n" or metric == "tokens" else f"{value:.4f}"
            table.add_row(task if i == 0 else "", metric, shown, f"{timings.get(task, 0):.1f}" if i == 0 else "")
    make_console().print(table)


def _print_tasks(reg: dict) -> None:
    from ..console import make_console
    from rich.table import Table

    table = Table("task", "plugin", "parameters (default)", "description")
    for name, (owner, cls) in sorted(reg.items()):
        params = ", ".join(f"{k}={p.default}" for k, p in cls.params.items())
        table.add_row(name, owner, params, cls.description + (" [needs --reference]" if cls.needs_reference else ""))
    make_console().print(table)

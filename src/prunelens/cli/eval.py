"""``prunelens eval``: run evaluation tasks on a model or an applied checkpoint."""

from __future__ import annotations

import json
from typing import Any

import click

from prunelens.cli._complete import complete_tasks
from prunelens.model.devices import DEVICE_HELP

DEFAULT_TASKS = "perplexity,mc_nextline,mc_letters"


@click.command("eval")
@click.argument("model", required=False)
@click.option("--tasks", "task_list", default=None, shell_complete=complete_tasks,
              help=f"Comma-separated tasks, each optionally NAME:k=v (default: {DEFAULT_TASKS}, plus gen_agreement "
                   "with --reference). See --list.")
@click.option("--reference", default=None, help="Dense model to compare against (needed by gen_agreement).")
@click.option("--samples", type=int, default=None, help="Items per task (n_samples), overriding each task's default.")
@click.option("--seed", type=int, default=None, help="Sampling seed for every task.")
@click.option("--batch-size", type=int, default=None, help="Sequences per forward pass for every task.")
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16, float16 or auto.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results (lm-eval's shape, with run details) to this JSON file; '-' prints "
                   "JSON only.")
@click.option("--log-samples", is_flag=True, help="Also record per-item logs in the JSON (\"samples\", as lm-eval).")
@click.option("--lm-eval", "lm_eval_tasks", default=None, metavar="TASKS",
              help="Also run these lm-evaluation-harness tasks (comma-separated) on the loaded model through "
                   "HFLM(pretrained=model); needs the lm-eval extra. Alone, it replaces the default tasks.")
@click.option("--lm-eval-include", "lm_eval_include", type=click.Path(exists=True), default=None,
              help="Folder (or YAML file) of extra lm-eval task definitions, e.g. a task over a local JSON file.")
@click.option("--list", "list_only", is_flag=True, help="List the available tasks and their parameters, then exit.")
def command(model: str | None, task_list: str | None, reference: str | None, samples: int | None, seed: int | None,
            batch_size: int | None, dtype: str, device: str, threads: int | None, json_path: str | None,
            log_samples: bool, lm_eval_tasks: str | None, lm_eval_include: str | None, list_only: bool) -> None:
    """Evaluate MODEL (a bundled alias, a checkpoint directory or a .gguf file) on offline tasks.

    \b
    Examples:
      prunelens eval smollm2-135m --threads 1
      prunelens eval out/pruned --reference smollm2-135m --tasks perplexity,mc_nextline,gen_agreement
      prunelens eval smollm2-135m --tasks gsm8k:n_samples=10,max_new_tokens=128 --json gsm.json
      prunelens eval out/pruned --lm-eval my_task --lm-eval-include tasks/ --json -

    The JSON (--json FILE, or - for standard output) is shaped like lm-evaluation-harness's
    results: "acc,none", "acc_stderr,none", integer "n-samples", "versions", "configs",
    "config"; `prunelens report --eval FILE` reads it.
    """
    from prunelens.evaluation.task_runner import task_registry

    if list_only:
        _print_tasks(task_registry())
        return
    from prunelens.errors import PrunelensError

    if not model:
        raise PrunelensError("name a model to evaluate (a bundled alias such as smollm2-135m, or a checkpoint "
                             "directory)")
    if json_path and json_path != "-":
        from prunelens.paths import check_writable_file

        check_writable_file(json_path, flag="--json")  # before the evaluation, not after it

    tasks = _checked_tasks(task_list, reference, lm_eval_tasks, n_samples=samples, seed=seed, batch_size=batch_size)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from prunelens.evaluation.results import read_results

    record = _evaluate(model, reference, tasks, dtype=dtype, device=device, batch_size=batch_size, seed=seed,
                       samples=samples, log_samples=log_samples, lm_eval_tasks=lm_eval_tasks,
                       lm_eval_include=lm_eval_include)
    text = json.dumps(record, indent=2, default=str)
    if json_path == "-":
        click.echo(text)
        return
    _print_results(model, next(iter(read_results(record).values())), record.get("seconds", {}))
    if json_path:
        from prunelens.fileio import atomic_write

        atomic_write(json_path, text + "\n")
        click.echo(f"wrote {json_path}")


def _checked_tasks(task_list: str | None, reference: str | None, lm_eval_tasks: str | None,
                   **params: Any) -> list[Any]:
    """The prunelens tasks to run, their names and parameters checked (and the lm-eval extra present when asked
    for) before anything is loaded."""
    from prunelens.errors import PrunelensError
    from prunelens.evaluation.task_runner import build_tasks, split_task_list

    if lm_eval_tasks and reference:
        raise PrunelensError("--reference is for prunelens tasks (gen_agreement); lm-eval tasks score one model")
    default = DEFAULT_TASKS + (",gen_agreement" if reference else "")
    specs = split_task_list(task_list if task_list is not None else ("" if lm_eval_tasks else default))
    tasks = build_tasks(specs, **params) if specs else []  # validate names and parameters before loading anything
    needs = [t.name for t in tasks if t.needs_reference]
    if needs and not reference:
        raise PrunelensError(f"{', '.join(needs)} compares against the dense model: add --reference MODEL")
    if lm_eval_tasks:
        from prunelens.evaluation.lm_eval_harness import require_lm_eval

        require_lm_eval()  # one clear line before loading anything
    return tasks


def _evaluate(model: str, reference: str | None, tasks: list[Any], *, dtype: str, device: str,
              batch_size: int | None, seed: int | None, samples: int | None, log_samples: bool,
              lm_eval_tasks: str | None, lm_eval_include: str | None) -> dict[str, Any]:
    """Load the model (and the reference), run the tasks and the lm-eval tasks; the results record."""
    from prunelens.evaluation.results import results_record
    from prunelens.evaluation.task_runner import run_tasks
    from prunelens.model.devices import resolve_device
    from prunelens.model.loading import load_model

    device = resolve_device(device)[0]
    loaded = load_model(model, dtype=dtype, device=device)
    ref = load_model(reference, dtype=dtype, device=device) if reference else None
    if ref is not None and ref.config_hash != loaded.config_hash:
        click.echo(f"note: {reference} and {model} have different configs (e.g. dropped layers); "
                   "comparing outputs only", err=True)
    timings: dict[str, float] = {}
    results = run_tasks(loaded, tasks, reference=ref, progress=True, timings=timings) if tasks else {}
    config = {"model_args": f"pretrained={model},dtype={dtype}", "config_hash": loaded.config_hash,
              "reference": reference, "dtype": dtype, "device": device, "batch_size": batch_size, "seed": seed}
    record = results_record(tasks, results, model=model, config=config, seconds=timings,
                            samples={t.name: t.samples for t in tasks} if log_samples else None)
    if lm_eval_tasks:
        from prunelens.evaluation.lm_eval_harness import merge_records, run_lm_eval

        lm_record = run_lm_eval(loaded, lm_eval_tasks, include_path=lm_eval_include, limit=samples,
                                batch_size=batch_size or 1, log_samples=log_samples)
        record = merge_records(record, lm_record)
    return record


def _print_results(model: str, results: dict[str, dict[str, float]], timings: dict[str, float]) -> None:
    from prunelens.console import make_console
    from prunelens.workflow.tables import eval_table

    console = make_console()
    console.print(f"prunelens eval: {model}", highlight=False, markup=False, soft_wrap=True)  # a long path stays whole
    console.print(eval_table(results, timings))


def _print_tasks(reg: dict) -> None:
    from prunelens.console import make_console
    from prunelens.workflow.listings import tasks_table

    make_console().print(tasks_table(reg))

"""``prunelens apply``: turn a plan into a checkpoint plain transformers loads."""

from __future__ import annotations

import click


@click.command("apply")
@click.argument("plan_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out when it holds a prunelens checkpoint.")
@click.option("--force", is_flag=True,
              help="Also replace a non-empty --out that is not a prunelens checkpoint (never the current "
                   "directory, home or their parents).")
@click.option("--calib-samples", type=int, default=32, show_default=True,
              help="Calibration windows (wanda, sparsegpt, gptq).")
@click.option("--calib-len", type=int, default=256, show_default=True, help="Tokens per calibration window.")
@click.option("--validate", "validate_store", type=click.Path(exists=True, file_okay=False), default=None,
              help="Then compare predicted with measured KL on this store's prompts (and write it into the plan).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as JSON (checkpoint path, summary, validation rows) instead of text.")
def command(plan_path, out, overwrite, force, calib_samples, calib_len, validate_store, as_json) -> None:
    """Apply PLAN to its model and save the result to --out (safetensors + tokenizer + prunelens.json)."""
    from prunelens.console import make_console
    from prunelens.fileio import refuse_stdout_dir
    from prunelens.paths import guard_output_dir
    from prunelens.plan.apply import apply_plan
    from prunelens.plan.document import Plan
    from prunelens.workflow.summaries import apply_lines

    refuse_stdout_dir(out, "--out")
    guard_output_dir(out, overwrite=overwrite, force=force)  # before any work
    console = make_console(stderr=as_json)  # with --json, stdout carries the JSON only
    plan = Plan.load(plan_path)
    from prunelens.cli._interrupt import mark_resumable
    from prunelens.compression.resume import work_dir_for

    mark_resumable(f"rerun the same command to resume after the last finished layer (kept in {work_dir_for(out)})")
    path, summary = apply_plan(plan, out, calib_samples=calib_samples, calib_len=calib_len, overwrite=overwrite,
                               force=force)
    for line in apply_lines(plan, path, summary):
        console.print(line)
    rows = None
    if validate_store:
        from prunelens.plan.apply import validate_plan
        from prunelens.plan.ranking import load_store
        from prunelens.workflow.tables import validation_table

        rows = validate_plan(plan, load_store(validate_store), checkpoint=path)
        console.print(validation_table(plan, rows))
        plan.save(plan_path)
    console.print(f"load it with: AutoModelForCausalLM.from_pretrained({str(path)!r})")
    if as_json:
        from prunelens.fileio import json_text

        click.echo(json_text({"plan": str(plan_path), "checkpoint": str(path), "method": plan.method,
                              "units": plan.unit_names, "summary": summary, "validation": rows}), nl=False)


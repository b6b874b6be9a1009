"""``prunelens report``: a Markdown report with PNG plots for a probe store (and a plan)."""

from __future__ import annotations

import click

from prunelens.cli._complete import complete_method, complete_ranker
from prunelens.cli.rank import KIND_CHOICE


@click.command("report")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--plan", "plan_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Include this plan (predicted vs measured KL, task results).")
@click.option("--eval", "eval_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Task results JSON (from prunelens eval --json) to tabulate.")
@click.option("--method", default=None, shell_complete=complete_method,
              help="Report only this method label of the store (default: every method, side by side).")
@click.option("--kind", type=KIND_CHOICE, default="all", show_default=True)
@click.option("--temperature", "-T", type=float, default=None, help="Default: the plan's, else 1.0 if probed.")
@click.option("--by", default="kl_pred", show_default=True, shell_complete=complete_ranker,
              help="Ranking strategy for the table.")
@click.option("--locality", type=click.Choice(["local", "propagated", "sublayer"]), default="propagated",
              show_default=True)
@click.option("--timing", type=click.Choice(["teacher_forced", "free_running"]), default="teacher_forced",
              show_default=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Report directory.")
def command(store, plan_path, eval_path, method, kind, temperature, by, locality, timing, out) -> None:
    """Write OUT/report.md with plots: 1-cos per layer, predicted vs measured KL, step-wise divergence, ranking.

    A store with several methods is reported method by method after a table comparing them.
    """
    from pathlib import Path

    from prunelens.paths import check_writable_dir
    from prunelens.plan.document import Plan
    from prunelens.plan.ranking import load_store, nonfinite_note
    from prunelens.safe_text import clean
    from prunelens.workflow.report import write_report

    check_writable_dir(Path(out), flag="--out", shown=out)  # before any work
    from prunelens.fileio import refuse_stdout_dir

    refuse_stdout_dir(out, "--out")
    plan = Plan.load(plan_path) if plan_path else None
    from prunelens.evaluation.results import load_results

    results = load_results(eval_path) if eval_path else None
    ds = load_store(store)
    path = write_report(ds, out, method=method, kind=None if kind == "all" else kind,
                        temperature=temperature, locality=locality, timing=timing, by=by, plan=plan,
                        eval_results=results, store_path=store)
    click.echo(clean(f"wrote {path} (+ {', '.join(p.name for p in sorted(path.parent.glob('*.png')))})"))
    note = nonfinite_note(ds)
    if note:
        click.secho(f"warning: {clean(note)} (see report.md)", err=True, fg="yellow")

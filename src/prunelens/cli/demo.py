"""``prunelens demo``: the whole pipeline on the bundled model with small defaults."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["attn", "mlp"]), default="attn", show_default=True,
              help="Unit kind to drop.")
@click.option("--budget", default="4", show_default=True, help="Units to drop (or a parameter fraction).")
@click.option("--temperature", "-T", type=float, default=0.7, show_default=True, help="Deployment temperature.")
@click.option("--samples", type=int, default=6, show_default=True, help="Probe prompts.")
@click.option("--steps", type=int, default=16, show_default=True, help="Probe decoding steps.")
@click.option("--free-running", is_flag=True, help="Also probe free-running generation (slower: each unit generates).")
@click.option("--eval-samples", type=int, default=16, show_default=True, help="Items per evaluation task.")
def command(out, kind, budget, temperature, samples, steps, free_running, eval_samples) -> None:
    """Probe → rank → plan → apply → validate → eval → report on SmolLM2-135M, then the decision: a level sweep,
    the knapsack plan beside uniform, both applied and scored (about 2.5 minutes on 2 cores)."""
    from prunelens.cli._interrupt import mark_resumable
    from prunelens.console import make_console
    from prunelens.workflow.demo import DemoSettings, run_demo

    mark_resumable("rerun the same command to resume (the probe store and the applied layers are kept)")

    temps = sorted({0.7, 1.0, temperature})
    settings = DemoSettings(kind=kind, budget=budget, temperature=temperature, samples=samples, steps=steps,
                            eval_samples=eval_samples, temperatures=",".join(f"{t:g}" for t in temps),
                            timing="teacher_forced,free_running" if free_running else "teacher_forced")
    console = make_console()
    run_demo(out, settings, say=console.print)

"""``prunelens validate``: the plan's predicted KL next to the KL measured on the store's prompts."""

from __future__ import annotations

import click


@click.command("validate")
@click.argument("plan_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--store", type=click.Path(exists=True, file_okay=False), default=None,
              help="Probe store whose prompts to replay (default: the plan's store).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="Applied checkpoint (from prunelens apply) to measure as well.")
@click.option("--no-cumulative", is_flag=True, help="Skip the unit-by-unit replay; measure the checkpoint only.")
@click.option("--write", "write", is_flag=True,
              help="Write the measured KL back into the plan file (default: the plan is left unchanged).")
@click.option("--no-write", "no_write", is_flag=True, hidden=True,
              help="Accepted for older scripts; the plan is left unchanged unless --write.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table (shape: docs/cli.md).")
def command(plan_path, store, checkpoint, no_cumulative, write, no_write, as_json) -> None:
    """Compare PLAN's predicted KL with the measured KL (cumulatively and for the applied checkpoint).

    PLAN is only read; --write records the measured KL in it.
    """
    from prunelens.console import make_console
    from prunelens.errors import PrunelensError
    from prunelens.plan.apply import validate_plan
    from prunelens.plan.document import Plan
    from prunelens.plan.ranking import load_store

    if write and no_write:
        raise click.UsageError("--write and --no-write contradict each other")
    console = make_console(stderr=as_json)  # with --json, stdout carries the JSON only
    plan = Plan.load(plan_path)
    store = store or plan.store_path
    if not store:
        raise PrunelensError("the plan names no store; pass --store")
    ds = load_store(store)
    with console.status("replaying the store's prompts...") as status:
        rows = validate_plan(plan, ds, checkpoint=checkpoint, cumulative=not no_cumulative,
                             progress=lambda m: status.update(f"measuring {m}"))
    if as_json:
        from prunelens.fileio import json_text
        from prunelens.workflow.tables import validation_json

        shown = validation_json(plan, rows, plan_path=plan_path, store=store, checkpoint=checkpoint)
        click.echo(json_text({**shown, "interaction_ratio": interaction_ratio(rows)}), nl=False)
    else:
        from prunelens.workflow.tables import validation_table

        console.print(validation_table(plan, rows))
    note = interaction_note(rows)
    if note:
        from prunelens.safe_text import esc

        console.print(esc(note))
    if write:
        plan.save(plan_path)
        console.print(f"measured KL written into {plan_path}")


INTERACTION_LIMIT = 1.2  # measured / Σ predicted above this: the units' damage compounds


def interaction_ratio(rows: list[dict]) -> float | None:
    """Measured KL of the whole plan (the checkpoint row, else the last replay row) / Σ predicted KL."""
    if not rows:
        return None
    last = rows[-1]
    pred, meas = last.get("cumulative_predicted_kl"), last.get("measured_kl")
    if pred is None or meas is None or not pred > 0:
        return None
    return float(meas) / float(pred)


def interaction_note(rows: list[dict]) -> str | None:
    """One line with the interaction ratio, naming the remedy when it is above ``INTERACTION_LIMIT``."""
    ratio = interaction_ratio(rows)
    if ratio is None:
        return None
    line = f"interaction ratio (measured / sum of predicted KL): {ratio:.2f}"
    if ratio > INTERACTION_LIMIT:
        line += (f" > {INTERACTION_LIMIT:g}: the units' errors compound beyond the sum the allocator minimised; "
                 "re-plan with --allocator search (fitness = the assembled model's KL) or --iterative")
    return line

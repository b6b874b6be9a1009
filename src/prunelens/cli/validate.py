"""``prunelens validate``: the plan's predicted KL next to the KL measured on the store's prompts."""

from __future__ import annotations

from typing import Any

import click

from .rank import fmt


def validation_table(plan: Any, rows: list[dict]) -> Any:
    from rich.table import Table

    t = Table(title=f"predicted vs measured KL(p_dense‖q) · {plan.method} · T={plan.temperature:g} · "
                    "store prompts, teacher-forced, at the output", title_justify="left",
              caption="row k: units 1..k applied together; pred KL: the unit alone (store); Σ pred: sum so far; "
                      "Taylor(set): Var_p(Δz)/(2T²) of the set", caption_justify="left")
    for col in ("k", "unit", "pred KL", "Σ pred KL", "measured KL", "meas/Σpred", "Taylor(set)", "top-1"):
        t.add_column(col, justify="left" if col == "unit" else "right", no_wrap=True)
    for r in rows:
        pred, meas = r["cumulative_predicted_kl"], r["measured_kl"]
        ratio = meas / pred if pred else None
        t.add_row(str(r["k"]), r["unit"], fmt(r["predicted_kl"]), fmt(pred), fmt(meas), fmt(ratio), fmt(r["taylor_kl_of_set"]),
                  f"{r['top1_agree']:.3f}")
    return t


@click.command("validate")
@click.argument("plan_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--store", type=click.Path(exists=True, file_okay=False), default=None,
              help="Probe store whose prompts to replay (default: the plan's store).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="Applied checkpoint (from prunelens apply) to measure as well.")
@click.option("--no-cumulative", is_flag=True, help="Skip the unit-by-unit replay; measure the checkpoint only.")
@click.option("--no-write", is_flag=True, help="Do not write the measured KL back into the plan file.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table (shape: docs/cli.md).")
def command(plan_path, store, checkpoint, no_cumulative, no_write, as_json) -> None:
    """Compare PLAN's predicted KL with the measured KL (cumulatively and for the applied checkpoint)."""
    from ..apply import validate_plan
    from ..console import make_console
    from ..errors import PrunelensError
    from ..plans import Plan
    from ..ranking import load_store

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
        from ..fileio import json_text

        click.echo(json_text({"plan": str(plan_path), "store": str(store), "checkpoint": checkpoint,
                              "method": plan.method, "temperature": plan.temperature,
                              "predicted_kl_total": plan.predicted_kl_total, "measured_kl_total": plan.measured_kl_total,
                              "measured": plan.measured, "rows": rows}), nl=False)
    else:
        console.print(validation_table(plan, rows))
    if not no_write:
        plan.save(plan_path)
        console.print(f"measured KL written into {plan_path}")

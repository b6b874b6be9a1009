"""``prunelens plan``: choose units under a budget from a probe store and write the plan."""

from __future__ import annotations

import click

from .rank import fmt, store_options


@click.command("plan")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@store_options
@click.option("--budget", required=True, help="Units to compress (e.g. 4) or a fraction of parameters (e.g. 0.1).")
@click.option("--iterative", is_flag=True,
              help="Take the best unit, re-probe the rest on the already-compressed model, repeat (kl_pred).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Plan JSON to write.")
@click.option("--mergekit", type=click.Path(dir_okay=False), default=None,
              help="Also write a mergekit passthrough YAML (block drops only).")
def command(store, method, kind, temperature, by, locality, timing, budget, iterative, out, mergekit) -> None:
    """Write a plan: the safest units of STORE under --budget, at --temperature."""
    from ..console import make_console
    from rich.table import Table

    from ..plans import atomic_write, iterative_plan, plan_from_store
    from ..ranking import load_store

    console = make_console()
    ds = load_store(store)
    kind_ = None if kind == "all" else kind
    if iterative:
        if by != "kl_pred":
            raise click.UsageError("--iterative re-probes predicted KL; use it with --by kl_pred")
        with console.status("iterative plan: re-probing after each choice...") as status:
            plan = iterative_plan(ds, method=method, kind=kind_, temperature=temperature, budget=budget,
                                  store_path=str(store), progress=lambda msg: status.update(f"re-probing {msg}"))
    else:
        plan = plan_from_store(ds, method=method, kind=kind_, temperature=temperature, by=by, budget=budget,
                               locality=locality, timing=timing, store_path=str(store))
    yaml_text = plan.to_mergekit_yaml() if mergekit else None
    plan.save(out)
    if yaml_text is not None:
        atomic_write(mergekit, yaml_text)
    t = Table(title=f"plan: {plan.method} · {plan.strategy}{' (iterative)' if plan.iterative else ''} · "
                    f"T={plan.temperature:g} · budget {plan.budget}", title_justify="left")
    for col in ("#", "unit", "score", "predicted KL", "cumulative predicted KL", "params"):
        t.add_column(col, justify="left" if col == "unit" else "right")
    for i, u in enumerate(plan.units, 1):
        t.add_row(str(i), u.unit, fmt(u.score), fmt(u.predicted_kl), fmt(u.cumulative_predicted_kl),
                  "-" if u.params is None else f"{u.params:,}")
    console.print(t)
    console.print(f"wrote {out}" + (f" and {mergekit}" if mergekit else ""))

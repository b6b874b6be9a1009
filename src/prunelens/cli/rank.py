"""``prunelens rank``: units sorted safest first at your temperature, with every store metric beside."""

from __future__ import annotations

import click

from prunelens.cli._complete import complete_method, complete_ranker

KIND_CHOICE = click.Choice(["attn", "mlp", "block", "all"])


def store_options(f):
    """The options shared by ``rank`` and ``plan``."""
    for opt in reversed([
        click.option("--method", default=None, shell_complete=complete_method,
                     help="Method label in the store (e.g. drop, wanda:sparsity=0.5)."),
        click.option("--kind", type=KIND_CHOICE, default="all", show_default=True, help="Unit kind to rank."),
        click.option("--temperature", "-T", type=float, default=1.0, show_default=True, help="Deployment temperature."),
        click.option("--by", default="kl_pred", show_default=True, shell_complete=complete_ranker,
                     help="Strategy, optionally with parameters: NAME or NAME:key=value,... "
                          "(e.g. late_first:attn_bonus=2); "
                          "see prunelens rank --list-strategies."),
        click.option("--locality", type=click.Choice(["local", "propagated", "sublayer"]), default="propagated",
                     show_default=True),
        click.option("--timing", type=click.Choice(["teacher_forced", "free_running"]), default="teacher_forced",
                     show_default=True),
    ]):
        f = opt(f)
    return f


@click.command("rank")
@click.argument("store", type=click.Path(exists=True, file_okay=False), required=False)
@store_options
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show only the N safest units.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the ranking (the --top rows) as CSV; '-' prints CSV only.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the ranking as JSON instead of a table (shape: docs/cli.md).")
@click.option("--list-strategies", is_flag=True, help="List the ranking strategies and exit.")
def command(store, method, kind, temperature, by, locality, timing, top, csv_path, as_json, list_strategies) -> None:
    """Rank the units of a probe STORE, safest first (lower predicted KL = safer)."""
    from prunelens.console import make_console
    from prunelens.plan.ranking import load_store, rank_units, ranker_registry

    console = make_console()
    if list_strategies:
        from prunelens.workflow.listings import strategies_table

        console.print(strategies_table(ranker_registry()))
        return
    if not store:
        raise click.UsageError("missing argument STORE (only --list-strategies works without one)")
    from prunelens.fileio import is_stdout, json_text, write_output
    from prunelens.paths import check_writable_file
    from prunelens.plan.ranking import nonfinite_note
    from prunelens.safe_text import esc
    from prunelens.workflow.tables import ranking_json, ranking_table, ranking_title

    check_writable_file(None if is_stdout(csv_path) else csv_path, flag="--csv")
    ds = load_store(store)
    df = rank_units(ds, method=method, kind=None if kind == "all" else kind, temperature=temperature, by=by,
                    locality=locality, timing=timing)
    shown = df if top is None else df.head(top)
    if csv_path:
        write_output(csv_path, shown.to_csv(index=False))
    if as_json:
        click.echo(json_text(ranking_json(shown, store=store, kind=kind)), nl=False)
    if as_json or is_stdout(csv_path):
        return
    title = ranking_title(df, kind=kind, temperature=temperature, by=by, locality=locality, timing=timing)
    console.print(ranking_table(shown, title))
    note = nonfinite_note(ds, df)
    if note:
        make_console(stderr=True).print(f"[yellow]warning: {esc(note)}[/yellow]")

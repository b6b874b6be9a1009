"""``prunelens plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import dataclasses
import json

import click


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(as_json: bool) -> None:
    """List plugins: name, version, source, hooks, methods and architectures."""
    from ..plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    from ..console import make_console
    from rich.table import Table

    table = Table("plugin", "version", "source", "hooks", "registers")
    for i in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in
                         (("methods", i.methods), ("architectures", i.architectures), ("tasks", i.tasks), ("rankers", i.rankers)) if v)
        table.add_row(i.name, i.version or "-", i.source, ", ".join(i.hooks), regs if not i.error else f"[red]error: {i.error}")
    make_console().print(table)

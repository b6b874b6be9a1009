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

    infos = plugin_infos(import_builtins=False)  # built-ins from their manifest: no torch import to list names
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    from rich.table import Table

    from ..console import make_console
    from ..safe_text import esc

    table = Table("plugin", "version", "source", "hooks", "registers")
    for i in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in
                         (("methods", i.methods), ("architectures", i.architectures), ("tasks", i.tasks), ("rankers", i.rankers),
                          ("allocators", i.allocators)) if v)
        # plugin strings are escaped: an error text like "[/0]" must print, not be parsed as markup
        table.add_row(esc(i.name), esc(i.version or "-"), esc(i.source), esc(", ".join(i.hooks)),
                      esc(regs) if not i.error else f"[red]error: {esc(i.error)}[/red]")
    make_console().print(table)

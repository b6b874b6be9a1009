"""``prunelens plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import dataclasses
import json

import click


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(as_json: bool) -> None:
    """List plugins: name, version, source, hooks, methods and architectures."""
    from prunelens.plugins import plugin_infos

    infos = plugin_infos(import_builtins=False)  # built-ins from their manifest: no torch import to list names
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    from prunelens.console import make_console
    from prunelens.workflow.listings import plugins_table

    make_console().print(plugins_table(infos))

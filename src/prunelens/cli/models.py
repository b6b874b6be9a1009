"""``prunelens models``: prepare and list the bundled real models."""

from __future__ import annotations

import json

import click


@click.group("models")
def command() -> None:
    """Prepare and list the bundled real models (offline)."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """Show the bundled models and whether each is prepared."""
    from prunelens.model.loading import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from prunelens.console import make_console
    from prunelens.workflow.listings import models_table

    make_console().print(models_table(rows))


@command.command("prepare")
@click.argument("alias")
@click.option("--force", is_flag=True, help="Convert again even if already prepared.")
def prepare_cmd(alias: str, force: bool) -> None:
    """Convert a bundled GGUF model (e.g. smollm2-135m) into a cached safetensors checkpoint.

    The location is $PRUNELENS_HOME/models/ALIAS (default ~/.cache/prunelens). A second
    call returns at once.
    """
    from prunelens.model.loading import is_prepared, prepare

    already = is_prepared(alias) and not force
    path = prepare(alias, force=force)
    click.echo(f"{alias}: {'already prepared' if already else 'prepared'} at {path}")

"""The ``prunelens`` command. Each module in this package that defines ``command`` is a subcommand.

Command modules import heavy libraries (torch, transformers) inside their functions so
that ``prunelens --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from .. import __version__
from ..errors import PrunelensError


class PrunelensGroup(click.Group):
    """Discovers subcommands and turns ``PrunelensError`` into a one-line error."""

    def _modules(self) -> list[str]:
        return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for mod in self._modules():
            cmd = getattr(importlib.import_module(f"{__name__}.{mod}"), "command", None)
            if cmd is not None:
                names.add(cmd.name)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        for mod in self._modules():
            found = getattr(importlib.import_module(f"{__name__}.{mod}"), "command", None)
            if found is not None and found.name == name:
                return found
        return None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrunelensError as exc:
            from ..safe_text import clean

            click.secho(f"Error: {clean(exc)}", err=True, fg="red")  # no terminal escapes from a store or a path
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; rerun the same command to resume.", err=True)
            sys.exit(130)


@click.group(cls=PrunelensGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="prunelens")
@click.option("--plugin", "plugin_files", multiple=True, type=click.Path(dir_okay=False),
              help="Load a plugin from this Python file (repeatable).")
def main(plugin_files: tuple[str, ...]) -> None:
    """prunelens: which layers of an LLM can be pruned or quantized without breaking generation.

    Probe each unit (block, attention, MLP) with a compression method, measure how it
    moves hidden states, logits and probabilities next to the Taylor predictions, rank
    the units at your deployment temperature and export a plan.
    """
    from ..plugins import load_plugin_file

    for path in plugin_files:
        load_plugin_file(path)

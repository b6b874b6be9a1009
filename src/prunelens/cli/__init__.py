"""The ``prunelens`` command. Each module in this package that defines ``command`` is a subcommand.

Command modules import heavy libraries (torch, transformers) inside their functions so
that ``prunelens --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from prunelens import __version__
from prunelens.errors import PrunelensError


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
            from prunelens.safe_text import clean

            click.secho(f"Error: {clean(exc)}", err=True, fg="red")  # no terminal escapes from a store or a path
            sys.exit(1)
        except (RuntimeError, MemoryError) as exc:  # out of memory anywhere (a cell names itself): one line
            from prunelens.model.devices import is_out_of_memory, out_of_memory

            if not is_out_of_memory(exc):
                raise
            click.secho(f"Error: {out_of_memory('', exc)}", err=True, fg="red")
            sys.exit(1)
        except KeyboardInterrupt:
            from prunelens.cli._interrupt import interrupted_message

            click.echo(interrupted_message(ctx), err=True)
            sys.exit(130)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``--plugin FILE`` is a group option but is accepted after the subcommand too (moved to the front)."""
        return super().parse_args(ctx, hoist_plugin_options(args))


def hoist_plugin_options(args: list[str]) -> list[str]:
    """``args`` with every ``--plugin FILE`` / ``--plugin=FILE`` before ``--`` moved to the front, order kept."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--plugin" and i + 1 < len(args):
            front += args[i : i + 2]
            i += 2
            continue
        if a.startswith("--plugin="):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


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
    from prunelens.plugins import load_plugin_file

    for path in plugin_files:
        load_plugin_file(path)

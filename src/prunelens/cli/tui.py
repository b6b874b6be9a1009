"""``prunelens tui``: the terminal UI over probe stores (textual is imported only when it runs)."""

from __future__ import annotations

import click


@click.command("tui")
@click.argument("paths", nargs=-1, type=click.Path())
def command(paths: tuple[str, ...]) -> None:
    """Browse probe stores (STORE.zarr or directories to search; default: here).

    Screens: 1 runs, 2 heatmap, 3 layer curves, 4 theory vs measured, 5 rank & plan;
    ? lists every key. Over a browser: textual serve "python -m prunelens_tui STORE".
    """
    from prunelens_tui.app import PrunelensApp

    PrunelensApp(list(paths) or ["."]).run()

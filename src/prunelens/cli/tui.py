"""``prunelens tui``: the terminal UI over probe stores (textual is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path

import click

from prunelens.errors import PrunelensError


def check_paths(paths: tuple[str, ...]) -> None:
    """A missing path or a plain file is a one-line error before the app starts (a damaged store opens as a row)."""
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise PrunelensError(f"{raw}: no such store or directory")
        if not path.is_dir():
            raise PrunelensError(f"{raw}: not a store or a directory (a store is a STORE.zarr directory)")


@click.command("tui")
@click.argument("paths", nargs=-1, type=click.Path())
def command(paths: tuple[str, ...]) -> None:
    """Browse probe stores (STORE.zarr or directories to search; default: here).

    Screens: 1 runs, 2 heatmap, 3 layer curves, 4 theory vs measured, 5 rank & plan;
    ? lists every key. A store that a probe is still writing fills in as its cells land.
    Over a browser: textual serve "python -m prunelens_tui STORE".
    """
    check_paths(paths)
    from prunelens_tui.app import PrunelensApp

    PrunelensApp(list(paths) or ["."]).run()

"""``python -m prunelens_tui [STORE_OR_DIR ...]`` (also ``--demo DIR`` to write and open a synthetic store)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunelens_tui", description="Browse prunelens probe stores.")
    parser.add_argument("paths", nargs="*", default=["."], help="stores (*.zarr) or directories to search")
    parser.add_argument("--demo", metavar="DIR", help="write a synthetic store into DIR and open it")
    args = parser.parse_args(argv)
    paths = args.paths
    if args.demo:
        from pathlib import Path

        from .synthetic import make_store

        store = Path(args.demo) / "synthetic.zarr"
        if not store.exists():
            make_store(store, num_layers=8, samples=4, steps=24, temperatures=(0.5, 0.7, 1.0))
        paths = [str(store)]
    else:
        from prunelens.cli.tui import check_paths
        from prunelens.errors import PrunelensError
        from prunelens.safe_text import clean

        try:
            check_paths(tuple(args.paths))
        except PrunelensError as exc:
            print(f"Error: {clean(exc)}", file=sys.stderr)  # no terminal escapes from a path
            return 1
    from .app import PrunelensApp

    PrunelensApp(paths).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

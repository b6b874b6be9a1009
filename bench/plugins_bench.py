"""How long ``prunelens plugins`` takes (target: under 2 s, no torch import to list built-ins).

Each command runs in a fresh process, ``--repeat`` times; the table shows the median wall time
of: ``prunelens --help`` (the CLI's floor), ``prunelens plugins`` (built-ins from the declared
manifest), and the same listing with every built-in imported (``plugin_infos(import_builtins=True)``,
which imports torch), with the ratio to ``plugins``.

    .venv/bin/python bench/plugins_bench.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "prunelens --help": [sys.executable, "-m", "prunelens", "--help"],
    "prunelens plugins": [sys.executable, "-m", "prunelens", "plugins", "--json"],
    "listing with built-ins imported": [
        sys.executable, "-c", "from prunelens.plugins import plugin_infos; plugin_infos(import_builtins=True)"],
}


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ)
    results = {}
    for name, cmd in COMMANDS.items():
        wall(cmd, env)  # warm the file cache
        results[name] = statistics.median(wall(cmd, env) for _ in range(args.repeat))
    base = results["prunelens plugins"]
    print(f"{'command':<34} {'median s':>9} {'÷ plugins':>10}")
    for name, s in results.items():
        print(f"{name:<34} {s:>9.2f} {s / base:>10.2f}")
    print(f"target: prunelens plugins < 2 s -> {'met' if base < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()

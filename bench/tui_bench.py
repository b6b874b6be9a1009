"""First paint of ``prunelens tui`` on a large synthetic store, beside reading the whole store eagerly.

The store: 4 methods x 90 units (30 layers x block/attn/mlp) x 16 samples x 64 steps x 4 temperatures,
both localities and timings, chunked method=1, unit=1 (as the probe writes it).

Each timing comes from a fresh ``python`` process (cold imports included), measured from the
moment the parent spawns it:
  first paint      the Runs screen is on screen (headless, 80x24)
  runs filled      the store's provenance row (attrs + done mask) is shown
  heatmap painted  '2' pressed and the unit x step heatmap drawn (one variable's slice read)
Side by side: the same process opening the store and loading every variable (what an eager UI does).

    .venv/bin/python bench/tui_bench.py [--store PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import asyncio, json, sys, time
t_spawn = float(sys.argv[2])
mode = sys.argv[3]
marks = {}
def mark(name):
    marks[name] = time.time() - t_spawn
if mode == "eager":
    from prunelens_tui.backend import open_store
    ds = open_store(sys.argv[1])
    ds.load()
    mark("eager_load")
else:
    from prunelens_tui.app import PrunelensApp
    from prunelens_tui.widgets.heatmap import HeatmapGrid
    mark("imported")
    async def main():
        app = PrunelensApp([sys.argv[1]])
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            mark("first_paint")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.ds is not None
            mark("runs_filled")
            await pilot.press("2")
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.screen.query_one(HeatmapGrid).values.shape == (90, 64)
            mark("heatmap_painted")
    asyncio.run(main())
print("MARKS " + json.dumps(marks))
"""

SHAPE = dict(methods=("drop", "wanda:sparsity=0.5", "magnitude:sparsity=0.5", "rtn:bits=4"), num_layers=30,
             samples=16, steps=64, temperatures=(0.5, 0.7, 1.0, 1.5))


def child(store: Path, mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(store), repr(time.time()), mode],
                         capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("MARKS ")][-1]
    return json.loads(line[6:])


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="reuse (or create) the large store here")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="tui-bench-")) / "large.zarr"
    if not (store / "zarr.json").exists():
        from prunelens_tui.synthetic import make_store

        t0 = time.perf_counter()
        make_store(store, **SHAPE)
        print(f"wrote {store} in {time.perf_counter() - t0:.1f} s")
    print(f"store: 4 methods x 90 units x 16 samples x 64 steps x 4 T; {du(store) / 2**20:.0f} MiB on disk")
    runs = [child(store, "tui") for _ in range(args.repeat)]
    eager = [child(store, "eager")["eager_load"] for _ in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    eager_med = statistics.median(eager)
    print(f"{'(median of ' + str(args.repeat) + ', seconds from process spawn)':<44}")
    for k, v in med.items():
        print(f"  {k:<18} {v:6.2f} s   (runs: {', '.join(f'{r[k]:.2f}' for r in runs)})")
    print(f"  {'eager full load':<18} {eager_med:6.2f} s   (runs: {', '.join(f'{e:.2f}' for e in eager)})")
    print(f"first paint target < 1 s: {'met' if med['first_paint'] < 1.0 else 'NOT met'} ({med['first_paint']:.2f} s)")
    print(f"app start -> first paint (imports excluded): {med['first_paint'] - med['imported']:.2f} s")
    print(f"eager load / lazy heatmap painted = {eager_med / med['heatmap_painted']:.1f}x")


if __name__ == "__main__":
    main()

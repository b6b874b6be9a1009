"""First paint of ``prunelens tui`` on a large synthetic store, beside reading the whole store eagerly.

The store: 4 methods x 90 units (30 layers x block/attn/mlp) x 16 samples x 64 steps x 4 temperatures,
both localities and timings, chunked method=1, unit=1 (as the probe writes it).

Each timing comes from a fresh ``python`` process (cold imports included), measured from the
moment the parent spawns it:
  imported         python started and the app's modules imported
  first paint      the Runs screen's first frame is written (headless, 80x24)
  runs filled      the store's provenance row (attrs + done mask) is shown
  heatmap painted  '2' pressed and the unit x step heatmap drawn (one variable's slice read)
Side by side: the same process opening the store and loading every variable (what an eager UI does).

    .venv/bin/python bench/tui_bench.py [--store PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
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
import os
marks = {}
def mark(name):
    cpu = os.times()
    marks[name] = (time.time() - t_spawn, cpu.user + cpu.system)
if mode == "eager":
    from prunelens_tui.backend import open_store
    ds = open_store(sys.argv[1])
    ds.load()
    mark("eager_load")
else:
    from prunelens_tui.app import PrunelensApp
    from prunelens_tui.screens import runs
    from prunelens_tui.widgets.heatmap import HeatmapGrid
    mark("imported")
    mount = runs.RunsScreen.on_mount
    def on_mount(self):  # the first frame of the Runs screen has been written
        self.call_after_refresh(mark, "first_paint")
        mount(self)
    runs.RunsScreen.on_mount = on_mount
    async def main():
        app = PrunelensApp([sys.argv[1]])
        async with app.run_test(size=(80, 24)) as pilot:
            while "first_paint" not in marks:
                await asyncio.sleep(0.005)
            await pilot.pause()
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
    load = os.getloadavg()[0]
    print(f"median of {args.repeat} fresh processes; wall = seconds from spawn, cpu = the process's user+sys "
          f"seconds (load average now {load:.1f} on {os.cpu_count()} cores: wall grows with load, cpu much less)")
    print(f"  {'':<18} {'wall':>7} {'cpu':>7}")
    med = {}
    for k in runs[0]:
        med[k] = (statistics.median(r[k][0] for r in runs), statistics.median(r[k][1] for r in runs))
        print(f"  {k:<18} {med[k][0]:6.2f}s {med[k][1]:6.2f}s")
    eager_med = (statistics.median(e[0] for e in eager), statistics.median(e[1] for e in eager))
    print(f"  {'eager full load':<18} {eager_med[0]:6.2f}s {eager_med[1]:6.2f}s   (open + load every variable)")
    fp = med["first_paint"]
    print(f"first paint (target < 1 s): wall {fp[0]:.2f} s, cpu {fp[1]:.2f} s; "
          f"after imports: wall {fp[0] - med['imported'][0]:.2f} s, cpu {fp[1] - med['imported'][1]:.2f} s")
    print(f"eager full load / lazy heatmap painted: wall {eager_med[0] / med['heatmap_painted'][0]:.1f}x, "
          f"cpu {eager_med[1] / med['heatmap_painted'][1]:.1f}x")


if __name__ == "__main__":
    main()

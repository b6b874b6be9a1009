"""Whole-process probe timing: the real CLI in a fresh process beside the bare-ops floor.

    python bench/probe_whole.py [--samples 4] [--steps 32] [--units attn,mlp] [--repeats 3] [--threads 1]
    python bench/probe_bench.py --whole-process ...        (the same)
    python bench/probe_whole.py --prebuild ...             (first load/build the kept compiled metric kernel)
    python bench/probe_whole.py --procs ...                (2 processes under torchrun vs 1 x 2 threads vs 1 x 1)

Per repeat, alternating, each in a fresh Python process:

* ``probe``: ``prunelens probe`` (store written, resume machinery on) timed from the inside:
  import, model load, dense greedy continuation, dense pass (the cached capture), per-unit
  ops (layer re-runs and perturbed readouts), dense readouts + softmax statistics, metrics,
  store writes; plus the process's wall time and peak RSS;
* ``probe T=3``: the same with three temperatures (``--temps3``);
* ``floor``: the ops any logit comparison needs, alone: one dense pass, each unit's layer on its
  cached input, one LM-head projection of the step rows per unit (the bare ops), and one of the
  dense rows per probed layer (the dense logits the perturbed ones are compared with); no
  metrics, no store.

Medians over repeats; ratios: kernel (dense pass + units + dense readouts + metrics, i.e.
everything after the continuation but the store) and whole process (wall) over the floor's
time; the ratio to the bare ops is printed beside it. Every child uses
``--threads`` torch threads (default 1: this bench runs on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD_PROBE = r'''
import json, os, sys, time
T0 = time.perf_counter()
out_json = sys.argv[1]
argv = sys.argv[2:]
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
import prunelens.cli as cli
from prunelens.model import loading
from prunelens.probe import engine as E
from prunelens.probe import vocab_pass as K
import prunelens_store.writer as W
T_IMPORT = time.perf_counter() - T0
acc = {}
state = {}

def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()

def timed(owner, name, key):
    fn = getattr(owner, name)
    def wrap(*a, **k):
        sync(); t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sync(); acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrap)

orig_prepare = E.ProbeEngine.prepare
def prepare(self, *a, **k):
    state["engine"], state["in_prepare"] = self, True
    try:
        return orig_prepare(self, *a, **k)
    finally:
        state["in_prepare"] = False
E.ProbeEngine.prepare = prepare
timed(models, "load_model", "load")
_load = loading.load_model
def load_and_note(*a, **k):
    out = _load(*a, **k)
    state["rss_after_load"] = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
    return out
loading.load_model = load_and_note
import prunelens.cli.probe as cp
if hasattr(cp, "load_model"):
    timed(cp, "load_model", "load")
timed(E.ProbeEngine, "prepare", "prepare")
_greedy = E.greedy_decode
def greedy_in_prepare(*a, **k):  # the dense continuation only (free-running cells call it too)
    if not state.get("in_prepare"):
        return _greedy(*a, **k)
    sync(); t = time.perf_counter()
    try:
        return _greedy(*a, **k)
    finally:
        sync(); acc["greedy"] = acc.get("greedy", 0.0) + time.perf_counter() - t
E.greedy_decode = greedy_in_prepare
timed(E.ProbeEngine, "measure", "measure")
timed(E.ProbeEngine, "_dense_rows", "dense_readouts")
timed(E, "row_metrics", "metrics")
timed(W, "create_store", "store")
timed(W.StoreWriter, "write_cell", "store")
timed(W.StoreWriter, "finalise", "store")
try:
    cli.main(argv, standalone_mode=False)
finally:
    status = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith(("VmHWM", "VmRSS"))}
    eng = state.get("engine")
    res = {"import": T_IMPORT, **acc, "peak_rss_mib": int(status.get("VmHWM", 0)) / 1024,
           "rss_after_load_mib": state.get("rss_after_load", 0.0),
           "kernel": eng.kernel.summary() if eng is not None else None, "inside_s": time.perf_counter() - T0}
    json.dump(res, open(out_json, "w"))
'''

CHILD_FLOOR = r'''
import json, os, sys, time
out_json = sys.argv[1]
model_id, samples, steps, prompt_len, units_spec, method_spec = sys.argv[2:8]
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from prunelens.compression.methods import parse_method
from prunelens.model.loading import load_model
from prunelens.probe.freerun import greedy_decode
from prunelens.probe.prompts import shakespeare_prompts
from prunelens.units import select_units
loaded = load_model(model_id)
ad = loaded.adapter
units = select_units(units_spec, ad.num_layers)
method = parse_method(method_spec)
prompts = shakespeare_prompts(loaded.tokenizer, int(samples), int(prompt_len))
ids = torch.tensor(prompts.ids)
with torch.no_grad():
    cont = greedy_decode(ad, ids, None, int(steps)).tokens
    seq = torch.cat([ids, cont[:, :-1]], 1)
    pos = torch.arange(ids.shape[1] - 1, ids.shape[1] - 1 + int(steps))
    t = time.perf_counter()
    ad.capture(seq)  # warm-up (left out of the floor process's wall below)
    warm_up = time.perf_counter() - t
    t = time.perf_counter()
    calls, final = ad.capture(seq)
    for u in units:
        with method.perturb(ad, u, None):
            x = ad.run_layer(u.layer, calls[u.layer].hidden, calls[u.layer])
        ad.readout(x[:, pos].reshape(-1, x.shape[-1]))
    ops = time.perf_counter() - t
    # the dense readouts a logit-space comparison also needs: one per probed layer
    t = time.perf_counter()
    for layer in sorted({u.layer for u in units}):
        h = calls[layer + 1].hidden if layer + 1 < len(calls) else final  # the last layer's: the final stream
        ad.readout(h[:, pos].reshape(-1, h.shape[-1]))
    dense_readouts = time.perf_counter() - t
status = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")}
json.dump({"ops": ops, "dense_readouts": dense_readouts, "warm_up": warm_up,
           "peak_rss_mib": int(status["VmHWM"]) / 1024}, open(out_json, "w"))
'''


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PRUNELENS_LOAD_PLUGINS=env.get("PRUNELENS_LOAD_PLUGINS", ""), PRUNELENS_NO_PROGRESS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def run_child(code: str, args: list[str], threads: int, tmp: Path, launcher: list[str] | None = None) -> dict:
    script = tmp / f"child_{abs(hash(code))}.py"
    script.write_text(code)
    out = tmp / f"out_{time.monotonic_ns()}.json"
    cmd = (launcher or [sys.executable]) + [str(script), str(out)] + args
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"child failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["wall"] = wall
    return res


def probe_args(a: argparse.Namespace, out: Path, temps: str, locality: str | None = None) -> list[str]:
    return ["probe", "--model", a.model, "--method", a.method, "--units", a.units, "--samples", str(a.samples),
            "--steps", str(a.steps), "--prompt-len", str(a.prompt_len), "--temperature", temps,
            "--locality", locality or a.locality, "--timing", a.timing, "--batch-size", str(a.batch_size or a.samples),
            "--out", str(out), "--quiet", "--device", "cpu"] \
        + ([] if a.compile == "auto" else ["--compile" if a.compile == "compiled" else "--no-compile"])


def med(rows: list[dict], key: str) -> float:
    vals = [r.get(key, 0.0) or 0.0 for r in rows]
    return statistics.median(vals)


def prebuild(a: argparse.Namespace, tmp: Path, threads: int | None = None) -> None:
    """Load or build the kept compiled metric kernel for each temperature count (one tiny ``--compile`` probe)."""
    threads = threads or a.threads
    for temps in [a.temperature] + (["0.5,0.7,1.0"] if a.temps3 else []):
        store = tmp / "prebuild.zarr"
        # one kernel shape, any rows
        tiny = argparse.Namespace(**{**vars(a), "units": "L0.attn", "samples": 1, "steps": 8, "compile": "compiled"})
        res = run_child(CHILD_PROBE, probe_args(tiny, store, temps), threads, tmp)
        shutil.rmtree(store, ignore_errors=True)
        k = res.get("kernel") or {}
        kept = "kept from before, loaded" if k.get("loaded") else "not compiled"
        what = f"built in {k['build_s']:.1f} s" if k.get("build_s") else kept
        print(f"compiled metric kernel, T={temps}, {threads} thread(s): {what}", flush=True)


def whole_process(a: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="probe-whole-"))
    runs: dict[str, list[dict]] = {"probe": [], "floor": []}
    if a.temps3:
        runs["probe T=3"] = []
    try:
        if a.prebuild:
            prebuild(a, tmp)
        for r in range(a.repeats):
            order = ["floor", "probe"] + (["probe T=3"] if a.temps3 else [])
            if r % 2:
                order.reverse()
            for name in order:
                if name == "floor":
                    floor_args = [a.model, str(a.samples), str(a.steps), str(a.prompt_len), a.units, a.method]
                    res = run_child(CHILD_FLOOR, floor_args, a.threads, tmp)
                else:
                    store = tmp / f"run{r}-{name.replace(' ', '').replace('=', '')}.zarr"
                    temps_of_run = "0.5,0.7,1.0" if name != "probe" else a.temperature
                    res = run_child(CHILD_PROBE, probe_args(a, store, temps_of_run), a.threads, tmp)
                    shutil.rmtree(store, ignore_errors=True)
                runs[name].append(res)
                print(f"repeat {r}: {name:10s} " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                                                               for k, v in res.items() if k != "kernel"}), flush=True)
        report(a, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(a: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    fl = runs["floor"]
    floor_ops, floor_dense = med(fl, "ops"), med(fl, "dense_readouts")
    print(f"\n{a.model}, units {a.units}, method {a.method}, {a.samples} samples x {a.steps} steps, T={a.temperature}, "
          f"threads {a.threads}, kernel {a.compile}, medians of {a.repeats} (fresh process each, alternating)")
    floor = floor_ops + floor_dense
    print(f"floor {floor:.2f} s = bare ops {floor_ops:.2f} s (dense pass + each unit's layer + one LM-head projection "
          f"per unit) + {floor_dense:.2f} s of dense readouts (one LM-head projection per probed layer: every logit "
          f"comparison needs the dense logits; the bare ops alone would put any probe at >= {floor / floor_ops:.2f}x); "
          f"floor process peak RSS {med(fl, 'peak_rss_mib'):.0f} MiB")
    for name in [k for k in runs if k != "floor"]:
        pr = runs[name]
        parts = {k: med(pr, k) for k in ("import", "load", "greedy", "prepare", "measure", "dense_readouts", "metrics",
                                         "store", "inside_s", "wall")}
        dense_pass = parts["prepare"] - parts["greedy"]
        units = parts["measure"] - parts["metrics"] - parts["dense_readouts"]
        kernel = dense_pass + parts["measure"]
        other = parts["wall"] - (parts["import"] + parts["load"] + parts["prepare"] + parts["measure"] + parts["store"])
        print(f"\n{name}: wall {parts['wall']:.2f} s, peak RSS {med(pr, 'peak_rss_mib'):.0f} MiB (after model load "
              f"{med(pr, 'rss_after_load_mib'):.0f} MiB: "
              f"+{med(pr, 'peak_rss_mib') - med(pr, 'rss_after_load_mib'):.0f}), kernel mode "
              f"{pr[-1]['kernel']['mode'] if pr[-1].get('kernel') else '?'} (compiled: "
              f"{pr[-1]['kernel']['compiled'] if pr[-1].get('kernel') else '?'}, kept kernel loaded: "
              f"{pr[-1]['kernel'].get('loaded') if pr[-1].get('kernel') else '?'})")
        for label, v in (("import", parts["import"]), ("model load", parts["load"]),
                         ("dense greedy continuation", parts["greedy"]),
                         ("dense pass (capture)", dense_pass), ("per-unit ops (layer + perturbed readout)", units),
                         ("dense readouts + softmax stats", parts["dense_readouts"]), ("metrics", parts["metrics"]),
                         ("store", parts["store"]), ("interpreter start, CLI, other", other)):
            print(f"  {label:42s} {v:8.2f} s  {100 * v / parts['wall']:5.1f} %")
        print(f"  {'kernel time (dense pass + cells)':42s} {kernel:8.2f} s  ratio to floor {kernel / floor:5.2f}x  "
              f"target <= 1.3x  (to the bare ops {kernel / floor_ops:4.2f}x)")
        print(f"  {'metrics alone / floor':42s} {parts['metrics'] / floor:8.2f}x")
        print(f"  {'whole process / floor':42s} {parts['wall'] / floor:8.2f}x")
        floor_process = med(fl, "wall") - (med(fl, "warm_up") if "warm_up" in fl[0] else 0.0)
        print(f"  {'whole process / floor process (walls)':42s} {parts['wall'] / floor_process:8.2f}x  target <= 1.4x  "
              f"(the floor process: start, load, continuation, the floor's ops; {floor_process:.2f} s)")
    if "probe T=3" in runs:
        k1 = med(runs["probe"], "prepare") - med(runs["probe"], "greedy") + med(runs["probe"], "measure")
        k3 = med(runs["probe T=3"], "prepare") - med(runs["probe T=3"], "greedy") + med(runs["probe T=3"], "measure")
        m1, m3 = med(runs["probe"], "metrics"), med(runs["probe T=3"], "metrics")
        print(f"\nthree temperatures vs one: kernel time {k3 / k1:.2f}x (target <= 1.3x), "
              f"metrics alone {m3 / m1:.2f}x, "
              f"wall {med(runs['probe T=3'], 'wall') / med(runs['probe'], 'wall'):.2f}x")


MODES = {"1 proc x 1 thread": (1, 1), "1 proc x 2 threads": (1, 2), "2 procs x 1 thread": (2, 1)}

CHILD_GEMM = r'''
import time, torch
torch.set_num_threads(1)
w, x = torch.randn(49152, 576), torch.randn(128, 576)
torch.nn.functional.linear(x, w)
t = time.perf_counter()
for _ in range(40):
    torch.nn.functional.linear(x, w)
print(time.perf_counter() - t)
'''


def gemm_ceiling() -> float:
    """What two processes can gain on this machine at all: 40 LM-head-sized GEMMs (1 thread) alone, then two
    copies at once; throughput ratio (2 x alone / slower of the pair)."""
    def run(n: int) -> list[float]:
        ps = [subprocess.Popen([sys.executable, "-c", CHILD_GEMM], stdout=subprocess.PIPE, text=True, env=child_env(1))
              for _ in range(n)]
        return [float(p.communicate()[0]) for p in ps]

    alone = min(run(1) + run(1))
    pair = run(2)
    ratio = 2 * alone / max(pair)
    print(f"machine ceiling: 40 LM-head GEMMs alone {alone:.2f} s, "
          f"two processes at once {pair[0]:.2f} / {pair[1]:.2f} s: "
          f"2 processes give {ratio:.2f}x the throughput of 1", flush=True)
    return ratio


def procs(a: argparse.Namespace) -> None:
    """2 processes (torchrun, gloo, 1 thread each) vs 1 process with 2 threads (same total cores) and vs
    1 process with 1 thread (how each way of using the second core scales); local and propagated."""
    tmp = Path(tempfile.mkdtemp(prefix="probe-procs-"))
    a.batch_size = a.batch_size or max(1, a.samples // 2)  # two batches: each rank decodes one continuation batch
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    res: dict[tuple[str, str], list[float]] = {}
    try:
        gemm_ceiling()
        if a.prebuild:  # a kept kernel is per thread count
            for threads in sorted({t for _, t in MODES.values()}):
                prebuild(a, tmp, threads)
        for r in range(a.repeats):
            for loc in ("local", "propagated"):
                for mode in (list(MODES) if r % 2 == 0 else list(reversed(MODES))):
                    nproc, threads = MODES[mode]
                    store = tmp / f"p{r}{loc}{nproc}{threads}.zarr"
                    args = probe_args(a, store, a.temperature, loc)
                    if nproc > 1:
                        cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "prunelens"] + args
                    else:
                        cmd = [sys.executable, "-m", "prunelens"] + args
                    t = time.perf_counter()
                    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
                    wall = time.perf_counter() - t
                    if proc.returncode != 0:
                        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
                    shutil.rmtree(store, ignore_errors=True)
                    res.setdefault((loc, mode), []).append(wall)
                    print(f"repeat {r}: {loc:10s} {mode:20s} {wall:8.2f} s", flush=True)
        print(f"\n{a.model}, units {a.units}, {a.samples} x {a.steps} (batches of {a.batch_size}), whole-process wall, "
              f"medians of {a.repeats}")
        for loc in ("local", "propagated"):
            one, threads2, two = (statistics.median(res[(loc, m)]) for m in MODES)
            print(f"{loc:10s} 1x1 {one:7.2f} s   1x2 {threads2:7.2f} s   2x1 {two:7.2f} s   "
                  f"2 threads scale {one / threads2:4.2f}x, 2 processes scale {one / two:4.2f}x; "
                  f"throughput 2 procs / 1 proc x 2 threads {threads2 / two:4.2f}x  target >= 1.7x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="drop")
    ap.add_argument("--units", default="attn,mlp")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--temperature", default="1.0")
    ap.add_argument("--locality", default="local")
    ap.add_argument("--timing", default="teacher_forced")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="samples per batch (default: all in one; --procs: half, so each of 2 ranks decodes one batch)")
    ap.add_argument("--temps3", action="store_true",
                    help="also run T=0.5,0.7,1.0 and print its ratio to one temperature")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", choices=("auto", "eager", "compiled"), default="auto")
    ap.add_argument("--prebuild", action="store_true",
                    help="first load or build this machine's kept compiled metric kernel (a one-time cost, printed)")
    ap.add_argument("--procs", action="store_true", help="2 processes vs 1 on the same total cores")
    return ap


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.procs:
        procs(a)
    else:
        whole_process(a)


if __name__ == "__main__":
    main()

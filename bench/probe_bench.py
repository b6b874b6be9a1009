"""Probe engine speed against naive protocols, side by side in one run, with peak RSS.

    python bench/probe_bench.py [--samples 16] [--steps 32] [--units L2.attn,...] [--temperature 1.0]
    python bench/probe_bench.py --whole-process [...]   (bench/probe_whole.py: CLI process vs floor)

(a) local probe vs a hook-based naive probe (the full model re-run per unit, metrics from
    its hidden states)                                                 target >= 2.5x
(b) teacher-forced local vs the paper's protocol (the prefix re-run at every step)
                                                                       target >= S/2 x
(c) local probe vs its lower bound (one dense pass + one pass of each unit alone + one
    LM-head projection per unit + one of the dense rows per probed layer, bare ops, no
    metrics; the ratio to the bare ops without the dense readouts is printed too)
                                                                       target <= 1.3x
(d) propagated probe vs the naive full re-run                          target >= 1.5x

Every protocol computes the same metrics (``row_metrics``) on the same rows, except the
lower bound, which computes none.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    reset_peak()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, peak_rss_mib(), out


@dataclass
class Setup:
    """What every protocol shares: the model, the probed units and method, the token rows and the metrics."""

    ad: Any
    model: Any
    units: list
    method: Any
    temps: list[float]
    seq: torch.Tensor  # prompt + greedy continuation (the teacher-forced sequence)
    pos: torch.Tensor  # the positions whose next-token prediction is measured
    steps: int
    compiled: bool

    def metrics(self, h, h2):
        from prunelens.probe.metrics import row_metrics

        return row_metrics(h, h2 - h, self.ad.readout(h), self.ad.readout(h2), self.temps, compiled=self.compiled)


def run_engine(c: Setup, e):
    """The dense pass that caches every layer's input, then each unit's cell (the continuation is given)."""
    def go():
        e.release()
        b = e.batches[0]
        from prunelens.probe.capture import capture_layers

        b.calls, b.final = capture_layers(c.ad, c.seq)
        for u in c.units:
            e.measure(c.method, u)
    return go


@torch.no_grad()
def naive(c: Setup, locality: str):
    """Hook-based: the full model per unit; layer outputs caught by forward hooks."""
    ad = c.ad

    def outputs(layer: int):
        caught = {}
        h = ad.layers[layer].register_forward_hook(
            lambda m, a, o, box=caught: box.__setitem__("x", o[0] if isinstance(o, tuple) else o))
        try:
            c.model(input_ids=c.seq, use_cache=False)
        finally:
            h.remove()
        return caught["x"][:, c.pos].reshape(-1, caught["x"].shape[-1])

    last = ad.num_layers - 1
    dense = {}
    for u in c.units:
        layer = u.layer if locality == "local" else last
        if layer not in dense:
            dense[layer] = outputs(layer)  # the naive probe also runs the dense model once per layer it needs
        with c.method.perturb(ad, u, None):
            # a swapped block is a new module: hook whatever sits at the layer now
            h2 = outputs(layer)
        c.metrics(dense[layer], h2)


@torch.no_grad()
def paper(c: Setup):
    """The paper's protocol: for each step, re-run the whole prefix (dense and perturbed)."""
    ad, method = c.ad, c.method
    for u in c.units:
        hs, h2s = [], []
        for s in range(c.steps):
            prefix = c.seq[:, : int(c.pos[s]) + 1]
            for store, ctx in ((hs, None), (h2s, u)):
                caught = {}
                mod = ad.layers[u.layer]
                if ctx is not None:
                    cm = method.perturb(ad, u, None)
                    cm.__enter__()
                    mod = ad.layers[u.layer]
                h = mod.register_forward_hook(
                    lambda m, a, o, box=caught: box.__setitem__("x", o[0] if isinstance(o, tuple) else o))
                try:
                    c.model(input_ids=prefix, use_cache=False)
                finally:
                    h.remove()
                    if ctx is not None:
                        cm.__exit__(None, None, None)
                store.append(caught["x"][:, -1])
        c.metrics(torch.stack(hs, 1).reshape(-1, hs[0].shape[-1]), torch.stack(h2s, 1).reshape(-1, hs[0].shape[-1]))


@torch.no_grad()
def lower_bound(c: Setup, dense_readouts: bool = True):
    """One dense pass + each unit's layer alone + one LM-head projection per unit (+ one of the dense
    rows per probed layer: the logits every comparison needs); no metrics."""
    ad, pos = c.ad, c.pos
    calls, final = ad.capture(c.seq)
    for u in c.units:
        with c.method.perturb(ad, u, None):
            x = ad.run_layer(u.layer, calls[u.layer].hidden, calls[u.layer])
        ad.readout(x[:, pos].reshape(-1, x.shape[-1]))
    for layer in sorted({u.layer for u in c.units}) if dense_readouts else []:
        h = calls[layer + 1].hidden if layer + 1 < len(calls) else final  # the last layer's: the final stream
        ad.readout(h[:, pos].reshape(-1, h.shape[-1]))


def compare(c: Setup, eng_local, eng_prop, skip_paper: bool) -> None:
    """Time every protocol (with peak RSS) and print each comparison beside its target."""
    print(f"{'comparison':44s} {'ours s':>8s} {'RSS MiB':>8s} {'other s':>8s} {'RSS MiB':>8s} {'ratio':>7s}  target",
          flush=True)

    def row(name, a, ma, b, mb, r, target):
        print(f"{name:44s} {a:8.2f} {ma:8.0f} {b:8.2f} {mb:8.0f} {r:7.2f}  {target}", flush=True)

    t_local, m_local, _ = timed(run_engine(c, eng_local))
    t_naive_l, m_naive_l, _ = timed(lambda: naive(c, "local"))
    row("(a) local probe vs naive full re-run", t_local, m_local, t_naive_l, m_naive_l, t_naive_l / t_local, ">= 2.5x")
    t_lb, m_lb, _ = timed(lambda: lower_bound(c))
    row("(c) local probe / lower bound", t_local, m_local, t_lb, m_lb, t_local / t_lb, "<= 1.3x")
    t_bare, m_bare, _ = timed(lambda: lower_bound(c, dense_readouts=False))
    row("    ... / bare ops (no dense readouts)", t_local, m_local, t_bare, m_bare, t_local / t_bare, "(information)")
    t_prop, m_prop, _ = timed(run_engine(c, eng_prop))
    t_naive_p, m_naive_p, _ = timed(lambda: naive(c, "propagated"))
    row("(d) propagated probe vs naive full re-run", t_prop, m_prop, t_naive_p, m_naive_p, t_naive_p / t_prop,
        ">= 1.5x")
    if not skip_paper:
        t_paper, m_paper, _ = timed(lambda: paper(c))
        row("(b) teacher-forced local vs prefix re-run", t_local, m_local, t_paper, m_paper, t_paper / t_local,
            f">= {c.steps / 2:g}x")
    print("(every protocol is given the dense greedy continuation; ours includes its one cached dense pass; "
          "RSS = peak resident set of the process during that protocol, model weights included)")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="drop")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--units", default="L2.attn,L2.mlp,L14.attn,L14.mlp,L27.attn,L27.mlp")
    ap.add_argument("--temperature", default="1.0")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--no-compile", action="store_true", help="eager metric kernels")
    ap.add_argument("--skip-paper", action="store_true", help="skip (b)'s slow prefix re-run protocol")
    return ap.parse_args()


def main() -> None:
    if "--whole-process" in sys.argv[1:]:  # the real CLI in fresh processes beside the floor: bench/probe_whole.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import probe_whole

        probe_whole.main([a for a in sys.argv[1:] if a != "--whole-process"])
        return
    args = parse_args()
    os.environ.setdefault("PRUNELENS_LOAD_PLUGINS", "")
    if args.threads:
        torch.set_num_threads(args.threads)

    from prunelens.compression.methods import parse_method
    from prunelens.model.loading import load_model
    from prunelens.probe.engine import ProbeEngine, ProbeSettings
    from prunelens.probe.prompts import shakespeare_prompts
    from prunelens.units import select_units

    loaded = load_model(args.model)
    ad = loaded.adapter
    units = select_units(args.units, ad.num_layers)
    method = parse_method(args.method)
    temps = [float(t) for t in args.temperature.split(",")]
    prompts = shakespeare_prompts(loaded.tokenizer, args.samples, args.prompt_len)
    S = args.steps
    compiled = not args.no_compile

    def engine(locality: str) -> ProbeEngine:
        st = ProbeSettings(steps=S, temperatures=tuple(temps), localities=(locality,), timings=("teacher_forced",),
                           batch_size=args.samples, compile=compiled)
        e = ProbeEngine(ad, prompts, st)
        e.prepare()
        return e

    eng_local = engine("local")
    batch = eng_local.batches[0]
    seq = torch.cat([batch.prompt_ids, batch.continuation[:, :-1]], 1)
    c = Setup(ad, loaded.model, units, method, temps, seq, batch.step_positions, S, compiled)
    print(f"{args.model}: {ad.num_layers} layers, {args.samples} samples x {S} steps, prompt {args.prompt_len}, "
          f"units {len(units)} ({args.units}), method {method.spec}, T={temps}, threads {torch.get_num_threads()}, "
          f"compiled metrics {compiled}")
    eng_local.measure(method, units[0])  # warm-up (compiles the metric kernel once)
    compare(c, eng_local, engine("propagated"), args.skip_paper)


if __name__ == "__main__":
    main()

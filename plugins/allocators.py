"""Built-in allocators (see ``prunelens.plan.allocation``).

- ``knapsack``: exact multiple-choice knapsack on the store's summed predicted KL.
- ``uniform``: every block at the budget's level (``wanda:sparsity=0.6``, ``rtn:bits=4``...).
- ``owl``: Outlier Weighed Layerwise sparsity (Yin et al., ICML 2024), the rule of its code:
  per block, the outlier ratio D = 100 · mean(A > M · mean(A)) of the Wanda scores
  ``A = |W_ij| · ||X_j||`` of every linear of the block (dense calibration activations);
  D is rescaled to ``[0, 2λ]`` and each block gets sparsity ``target − (D' − mean D')``.
- ``ranked``: a ranking strategy's order (``block_influence``, ``angular``...), taken safest
  first until the budget is met (drops, and the schema-1 behaviour under any budget).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from prunelens.errors import PrunelensError
from prunelens.hookspecs import hookimpl
from prunelens.params import Param
from prunelens.plan.allocation import (
    Allocation,
    Allocator,
    AllocContext,
    Choice,
    choice_covers_layer,
    layer_choices,
    layer_combinations,
    solve_mckp,
    store_options,
    within_band,
)
from prunelens.plan.budgets import option_effect, requirement, saving
from prunelens.units import Unit, overlaps

MAX_RESOLUTION = 1_000_000  # 16 bytes per grid step and layer: 0.5 GB for 32 layers


class Knapsack(Allocator):
    name = "knapsack"
    description = ("Minimise the summed predicted KL (store, at T) over one option per layer: dense, the block, or "
                   "its attention and/or MLP at any probed level; exact multiple-choice knapsack.")
    needs = "store"
    params = {"resolution": Param(int, 8000, "budget grid steps of the dynamic programme (non-integer savings)",
                                  check=lambda v: None if 10 <= v <= MAX_RESOLUTION else
                                  f"resolution must lie in [10, {MAX_RESOLUTION}] (the programme keeps 16 bytes per "
                                  "grid step and layer)"),
              "score": Param(str, "kl_pred",
                             "store variable summed per unit: kl_pred (predicted) or kl (measured alone)",
                             check=lambda v: None if v in ("kl_pred", "kl") else "score must be kl_pred or kl"),
              "band": Param(float, None, "only levels within the budget's target +- band (sparsity fraction or bits), "
                                         "like OWL's lambda; dense and drop then only when inside it",
                            check=lambda v: None if v >= 0 else "band must be >= 0")}

    def allocate(self, ctx: AllocContext) -> Allocation:
        options = store_options(ctx, self.score)
        sizes = ctx.sizes()
        combos = layer_choices(ctx, options, self.band)
        groups = [[(sum(o.saving for o in c), sum(o.predicted_kl for o in c)) for c in cs] for cs in combos]
        need = requirement(ctx.budget, sizes, ctx.dense_bits)
        _check_reach(ctx, groups, need)
        try:
            picks, info = solve_mckp(groups, need, self.resolution)
        except PrunelensError as exc:
            raise PrunelensError(f"budget {ctx.budget.text} cannot be met with the store's options "
                                 f"({', '.join(ctx.store_labels())}): {exc}") from None
        choices = [Choice(o.unit, o.method, o.predicted_kl, o.saving) for cs, k in zip(combos, picks) for o in cs[k]]
        return Allocation(choices, {"predicted_kl_sum": info["cost"], "lower_bound": info["lower_bound"],
                                    "gap": info["gap"], "grid": info["resolution"],
                                    "options": sum(len(v) for v in options.values())})


def _check_reach(ctx: AllocContext, groups: list, need: float) -> None:
    """A one-line error in the budget's own terms when even the largest options fall short."""
    from prunelens.plan.budgets import achieved

    reach = sum(max(s for s, _ in g) for g in groups)
    if reach < need * (1 - 1e-12):
        best = achieved(ctx.budget, reach, ctx.sizes(), ctx.dense_bits)
        raise PrunelensError(f"budget {ctx.budget.text} cannot be met with the store's options "
                             f"({', '.join(ctx.store_labels())}): they reach at most {ctx.budget.kind}={best:.4g}")


def _single_method(ctx: AllocContext, who: str) -> str:
    names = ctx.method_names()
    if len(names) != 1:
        raise PrunelensError(f"{who} allocates one method; choose it with --method ({', '.join(names)})")
    return names[0]


def _store_kl(ctx: AllocContext, spec: str, units: list[Unit]) -> list[float | None]:
    """The store's predicted KL of ``spec`` on ``units`` where it was probed (else None)."""
    from prunelens.compression.methods import parse_method
    from prunelens.plan.ranking import store_means

    if ctx.ds is None:
        return [None] * len(units)
    labels = {}
    for lab in (str(v) for v in ctx.ds["method"].values):
        try:
            labels[parse_method(lab).spec] = lab
        except PrunelensError:
            continue
    label = labels.get(parse_method(spec).spec)
    if label is None:
        return [None] * len(units)

    have = {str(u) for u in ctx.ds["unit"].values}
    probe = [u for u in units if u.name in have]
    if not probe:
        return [None] * len(units)
    means = store_means(ctx.ds, method=label, temperature=ctx.temperature, locality=ctx.locality, timing=ctx.timing,
                        units=probe)["kl_pred"]
    got = {u.name: float(v) for u, v in zip(probe, means) if math.isfinite(float(v))}
    return [got.get(u.name) for u in units]


def _layer_units(ctx: AllocContext, method: Any) -> list[Unit]:
    n = ctx.sizes().num_layers
    kind = ctx.kind or ("block" if "block" in method.unit_kinds else None)
    kinds = [kind] if kind else [k for k in ("attn", "mlp") if k in method.unit_kinds]
    if any(k not in method.unit_kinds for k in kinds) or not kinds:
        raise PrunelensError(f"method {method.name!r} cannot act on {kind} units")
    return [Unit(i, k) for i in range(n) for k in kinds]


def _choices(ctx: AllocContext, units: list[Unit], specs: list[str]) -> list[Choice]:
    from prunelens.compression.methods import parse_method

    sizes = ctx.sizes()
    out: list[Choice] = []
    for spec in dict.fromkeys(specs):
        these = [u for u, s in zip(units, specs) if s == spec]
        effect = option_effect(parse_method(spec))
        for u, kl in zip(these, _store_kl(ctx, spec, these)):
            out.append(Choice(u.name, spec, kl, saving(ctx.budget, u, effect, sizes, ctx.dense_bits)))
    return out


class Uniform(Allocator):
    name = "uniform"
    description = ("Every block at the budget's level: --budget sparsity=0.6 -> <method>:sparsity=0.6; "
                   "bits=4 -> <method>:bits=4.")
    needs = "none"
    params = {}

    def allocate(self, ctx: AllocContext) -> Allocation:
        from prunelens.compression.methods import parse_method

        key = ctx.budget.kind
        if key not in ("sparsity", "bits"):
            raise PrunelensError(f"uniform allocates a sparsity or bits budget, not {ctx.budget.text}")
        name = _single_method(ctx, "uniform")
        level: Any = ctx.budget.value
        if key == "bits":
            if not float(level).is_integer():
                raise PrunelensError(f"uniform needs a whole number of bits, not {level:g}")
            level = int(level)
        spec = parse_method(f"{name}:{key}={level}")
        if key not in spec.params:
            raise PrunelensError(f"method {name!r} has no {key!r} parameter for a uniform {key} budget")
        units = _layer_units(ctx, spec)
        return Allocation(_choices(ctx, units, [spec.spec] * len(units)), {"level": level})


def owl_sparsities(outlier_ratios: list[float] | np.ndarray, target: float, lmbda: float = 0.08) -> np.ndarray:
    """OWL's rule: ratios rescaled to ``[0, 2λ]``, layer sparsity ``target − (D' − mean D')`` (mean = target)."""
    d = np.asarray(outlier_ratios, dtype=np.float64)
    span = d.max() - d.min()
    if span <= 0:
        return np.full(len(d), float(target))
    scaled = (d - d.min()) * (1.0 / span * lmbda * 2)
    density = scaled - scaled.mean() + (1.0 - target)
    return 1.0 - density


def owl_outlier_ratios(loaded: Any, calib_ids: Any, m: float = 5.0, batch_size: int = 8) -> list[float]:
    """Per block, 100 · the fraction of Wanda scores ``|W|·sqrt(S)`` above ``m`` × their mean (dense activations)."""
    import torch

    from prunelens.compression.calibration import collect_stats

    adapter = loaded.adapter
    blocks = [Unit(i, "block") for i in range(adapter.num_layers)]
    stats = collect_stats(loaded, blocks, "input_norms", calib_ids, batch_size=batch_size)
    ratios = []
    with torch.no_grad():
        for b in blocks:
            scores = torch.cat([(mod.weight.detach().float().abs() * stats[name].value.sqrt().unsqueeze(0)).flatten()
                                for name, mod in adapter.linears(b).items()])
            ratios.append(100.0 * float((scores > scores.mean() * m).sum()) / scores.numel())
    return ratios


class OWL(Allocator):
    name = "owl"
    description = ("Outlier Weighed Layerwise sparsity (Yin et al. 2024): block sparsity from Wanda-score "
                   "outlier ratios.")
    needs = "model"
    params = {
        "M": Param(float, 5.0, "outlier threshold: scores above M x the layer mean",
                   check=lambda v: None if v > 0 else "M must be positive"),
        "lmbda": Param(float, 0.08, "band: layer sparsities lie within target +- lmbda",
                       check=lambda v: None if 0 <= v < 0.5 else "lmbda must lie in [0, 0.5)"),
        "calib_samples": Param(int, 32, "calibration windows"),
        "calib_len": Param(int, 256, "tokens per calibration window"),
    }

    def allocate(self, ctx: AllocContext) -> Allocation:
        from prunelens.compression.methods import parse_method

        if ctx.budget.kind != "sparsity":
            raise PrunelensError(f"owl allocates a sparsity budget, not {ctx.budget.text}")
        name = _single_method(ctx, "owl")
        base = parse_method(name)
        if "sparsity" not in base.params or "block" not in base.unit_kinds:
            raise PrunelensError(f"owl needs a pruning method with a sparsity parameter acting on blocks, not {name!r}")
        loaded = ctx.model()
        ratios = owl_outlier_ratios(loaded, ctx.calibration(self.calib_samples, self.calib_len), self.M)
        # levels to 4 decimals, rounded up: their (size-weighted) mean never falls below the budget's target
        sp = np.ceil(owl_sparsities(ratios, ctx.budget.value, self.lmbda) * 1e4 - 1e-6) / 1e4
        if sp.min() < 0 or sp.max() >= 1:
            raise PrunelensError(f"owl gives layer sparsities outside [0, 1) ({sp.min():.3f}..{sp.max():.3f}); "
                                 "lower lmbda")
        units = [Unit(i, "block") for i in range(len(sp))]
        specs = [parse_method(f"{name}:sparsity={float(s):.4f}").spec for s in sp]
        return Allocation(_choices(ctx, units, specs), {"outlier_ratios": [round(r, 4) for r in ratios],
                                                         "layer_sparsity": [round(float(s), 4) for s in sp]})


class Ranked(Allocator):
    name = "ranked"
    description = ("A ranking strategy's order (--by-style: kl_pred, block_influence, angular...) taken until "
                   "the budget is met.")
    needs = "store"
    params = {"by": Param(str, "kl_pred", "ranking strategy (prunelens rank --list-strategies)")}

    def allocate(self, ctx: AllocContext) -> Allocation:
        from prunelens.compression.methods import parse_method
        from prunelens.plan.ranking import rank_units

        labels = ctx.store_labels() if ctx.ds is not None else list(ctx.methods or [])
        if len(labels) != 1:
            raise PrunelensError(f"ranked allocates one method spec; choose it with --method ({', '.join(labels)})")
        label = labels[0]
        df = rank_units(ctx.ds, method=label, kind=ctx.kind, temperature=ctx.temperature, by=self.by,
                        locality=ctx.locality, timing=ctx.timing, loaded=ctx.loaded)
        df = df[df["rank"].notna()]
        method = parse_method(label)
        effect = option_effect(method)
        sizes = ctx.sizes()
        need = requirement(ctx.budget, sizes, ctx.dense_bits)
        taken: dict[int, set[str]] = {}
        choices: list[Choice] = []
        got = 0.0
        for name, kl in zip(df["unit"], df["kl_pred"]):
            if got >= need:
                break
            u = Unit.parse(str(name))
            kinds = taken.get(u.layer, set())
            if overlaps(u, kinds) or u.kind not in method.unit_kinds:
                continue
            s = saving(ctx.budget, u, effect, sizes, ctx.dense_bits)
            if s <= 0:
                continue
            choices.append(Choice(u.name, label, None if not math.isfinite(float(kl)) else float(kl), s))
            taken.setdefault(u.layer, set()).add(u.kind)
            got += s
        if got < need * (1 - 1e-9):
            raise PrunelensError(f"budget {ctx.budget.text} cannot be met by {label!r} on the ranked units")
        return Allocation(choices, {"by": self.by})


class IterativeKnapsack(Knapsack):
    name = "iterative"
    description = ("Knapsack in rounds: fix the first layers' choices, compress them for real, re-probe the remaining "
                   "layers' options on that partially compressed model, solve again.")
    needs = "store"
    params = {**Knapsack.params,
              "rounds": Param(int, 2, "rounds (layers fixed in equal slices, front to back)",
                              check=lambda v: None if v >= 2 else "rounds must be at least 2"),
              "calib_samples": Param(int, 32, "calibration windows (compression and re-probe statistics)"),
              "calib_len": Param(int, 256, "tokens per calibration window")}

    def allocate(self, ctx: AllocContext) -> Allocation:
        import copy

        from prunelens.compression.methods import parse_method
        from prunelens.compression.per_unit import compress_mixed

        if self.score != "kl_pred":
            raise PrunelensError("iterative re-probes predicted KL; use score=kl_pred")
        options = store_options(ctx, self.score)
        dense_ok = True
        if self.band is not None:
            options, dense_ok = within_band(ctx, options, self.band)
        sizes = ctx.sizes()
        n = sizes.num_layers
        need = requirement(ctx.budget, sizes, ctx.dense_bits)
        base = ctx.model()
        work = copy.deepcopy(base)  # compressed step by step; the caller's model stays dense
        calib = ctx.calibration(self.calib_samples, self.calib_len)
        fixed: dict[int, tuple] = {}
        history = []
        bounds = [round(n * r / self.rounds) for r in range(1, self.rounds)] + [n]
        lo = 0
        for r, hi in enumerate(bounds, start=1):
            combos = [[fixed[i]] if i in fixed else self._combos(options.get(i, []), dense_ok) for i in range(n)]
            groups = [[(sum(o.saving for o in c), sum(o.predicted_kl for o in c)) for c in cs] for cs in combos]
            _check_reach(ctx, groups, need)
            try:
                picks, info = solve_mckp(groups, need, self.resolution)
            except PrunelensError as exc:
                raise PrunelensError(f"budget {ctx.budget.text} cannot be met in round {r}: {exc}") from None
            history.append({"round": r, "predicted_kl_sum": info["cost"], "gap": info["gap"]})
            if hi >= n:
                break
            new = {i: combos[i][picks[i]] for i in range(lo, hi)}
            fixed.update(new)
            units = [(Unit.parse(o.unit), parse_method(o.method)) for i in range(lo, hi) for o in new[i]]
            if units:
                compress_mixed(work, units, calib_ids=calib, progress=False)
            options.update(self._reprobe(ctx, work, {i: options.get(i, []) for i in range(hi, n)}, calib))
            lo = hi
        choices = [Choice(o.unit, o.method, o.predicted_kl, o.saving) for cs, k in zip(combos, picks) for o in cs[k]]
        return Allocation(choices, {"predicted_kl_sum": info["cost"], "lower_bound": info["lower_bound"],
                                    "gap": info["gap"], "grid": info["resolution"], "rounds": history,
                                    "options": sum(len(v) for v in options.values())})

    @staticmethod
    def _combos(opts: list, dense_ok: bool) -> list:
        cs = layer_combinations(opts)
        return cs if dense_ok else ([c for c in cs if choice_covers_layer(c)] or cs)

    @staticmethod
    def _reprobe(ctx: AllocContext, work: Any, remaining: dict[int, list], calib: Any) -> dict[int, list]:
        """Predicted KL of every remaining option on the partially compressed ``work`` model (its own reference)."""
        import dataclasses

        from prunelens.compression.calibration import collect_stats
        from prunelens.compression.methods import parse_method
        from prunelens.plan.apply import store_prompt_ids
        from prunelens.probe.engine import ProbeEngine, ProbeSettings
        from prunelens.probe.prompts import Prompts

        settings = ProbeSettings(steps=int(ctx.ds.sizes["step"]), temperatures=(ctx.temperature,),
                                 localities=(ctx.locality,), timings=(ctx.timing,),
                                 readout=str(ctx.ds.attrs.get("readout", "norm")))
        tok = work.tokenizer
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
        engine = ProbeEngine(work.adapter, Prompts(store_prompt_ids(ctx.ds), source="store"), settings, pad_id=pad)
        engine.prepare()  # the partially compressed model's own continuation is the new reference
        units = sorted({Unit.parse(o.unit) for opts in remaining.values() for o in opts})
        stats: dict[str, Any] = {}
        out: dict[int, list] = {}
        for i, opts in remaining.items():
            kept = []
            for o in opts:
                m = parse_method(o.method)
                st = None
                if m.calibration != "none":
                    if m.calibration not in stats:
                        stats[m.calibration] = collect_stats(work, units, m.calibration, calib)
                    st = stats[m.calibration]
                kl = float(np.nanmean(engine.measure(m, Unit.parse(o.unit), st).arrays["kl_pred"]))
                if math.isfinite(kl):
                    kept.append(dataclasses.replace(o, predicted_kl=kl))
            out[i] = kept
        return out


@hookimpl
def register_allocators(register):
    from prunelens.plan.search_allocation import SearchAllocator  # search: the knapsack's seed, evolved on real KL

    for cls in (Knapsack, Uniform, OWL, Ranked, IterativeKnapsack, SearchAllocator):
        register(cls)

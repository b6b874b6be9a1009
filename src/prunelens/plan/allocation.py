"""Allocators: choose one option per unit (dense, or a method spec at some level) under a budget.

An allocator is an ``Allocator`` class registered through the ``register_allocators`` hook
(built-ins in ``prunelens_plugins.allocators``: ``knapsack``, ``uniform``, ``owl``, ``ranked``).
``allocate_plan`` runs one and turns its ``Allocation`` into a schema-2 ``Plan`` in which
every unit carries its own method spec.

``solve_mckp`` is the exact multiple-choice knapsack the ``knapsack`` allocator uses: one
option per group (a group = one layer: dense, the block compressed, or its attention and/or
MLP compressed, so a block is never chosen together with its own sublayers), minimising the
summed predicted KL subject to ``Σ saving ≥ required``. Savings are discretised onto an
integer grid; rounding them down gives a plan that meets the budget (an upper bound on the
optimum), rounding them up gives a relaxation whose optimum is a lower bound; the
difference is reported as the optimality gap (zero when savings are integers, e.g. units).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from prunelens.errors import PrunelensError, unknown
from prunelens.params import Param, Parameterized
from prunelens.plan.budgets import (
    DENSE_BITS,
    Budget,
    UnitSizes,
    achieved,
    option_effect,
    parse_budget_spec,
    requirement,
    saving,
)
from prunelens.units import KINDS, Unit, covers_layer, first_overlap


# -- the solver ----------------------------------------------------------------------------
def _dp(groups: Sequence[Sequence[tuple[float, float]]], weights: list[list[int]], cap: int) -> tuple[float, list[int]]:
    """min Σ cost with Σ weight ≥ cap (weights saturate at cap); returns (cost, picks) or (inf, [])."""
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for g, opts in enumerate(groups):
        new = np.full(cap + 1, np.inf)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        src = np.full(cap + 1, -1, dtype=np.int64)
        for k, (_, cost) in enumerate(opts):
            w = min(max(weights[g][k], 0), cap)
            cand = np.full(cap + 1, np.inf)
            frm = np.full(cap + 1, -1, dtype=np.int64)
            cand[w:cap] = best[: cap - w] + cost  # states below cap: exactly w more
            frm[w:cap] = np.arange(cap - w)
            tail = best[cap - w:] + cost  # every state from cap - w on saturates at cap
            j = int(np.argmin(tail))
            cand[cap], frm[cap] = tail[j], cap - w + j
            upd = cand < new
            new[upd], arg[upd], src[upd] = cand[upd], k, frm[upd]
        best = new
        back.append((arg, src))
    if not np.isfinite(best[cap]):
        return math.inf, []
    picks, state = [], cap
    for arg, src in reversed(back):
        picks.append(int(arg[state]))
        state = int(src[state])
    return float(best[cap]), picks[::-1]


def solve_mckp(groups: Sequence[Sequence[tuple[float, float]]], required: float,
               resolution: int = 8000) -> tuple[list[int], dict[str, Any]]:
    """Pick one ``(saving, cost)`` option per group minimising Σ cost subject to Σ saving ≥ ``required``.

    Every group must hold at least one option (put the dense option ``(0, 0)`` in each).
    Returns the chosen index per group and ``info``: ``cost`` (upper bound, feasible),
    ``lower_bound``, ``gap``, ``resolution``. Raises ``PrunelensError`` when no choice meets
    ``required``.
    """
    if any(len(g) == 0 for g in groups):
        raise PrunelensError("every group needs at least one option")
    reach = sum(max(s for s, _ in g) for g in groups)
    if required <= 0:
        picks = [min(range(len(g)), key=lambda k: g[k][1]) for g in groups]
        cost = sum(g[k][1] for g, k in zip(groups, picks))
        return picks, {"cost": cost, "lower_bound": cost, "gap": 0.0, "resolution": 0}
    if reach < required * (1 - 1e-12):
        raise PrunelensError(f"no choice of options meets the budget: the options reach at most {reach:g} of the "
                             f"{required:g} required")
    savings = [s for g in groups for s, _ in g]
    integral = all(float(s).is_integer() for s in savings) and float(required).is_integer() and required <= 200_000
    while True:
        if integral:
            scale, cap = 1.0, int(required)
        else:
            scale, cap = resolution / required, resolution
        floor_w = [[min(cap, int(math.floor(s * scale + 1e-9))) for s, _ in g] for g in groups]
        upper, picks = _dp(groups, floor_w, cap)
        if integral:
            return picks, {"cost": upper, "lower_bound": upper, "gap": 0.0, "resolution": cap}
        ceil_w = [[min(cap, int(math.ceil(s * scale - 1e-9))) for s, _ in g] for g in groups]
        lower, _ = _dp(groups, ceil_w, cap)
        # rounding to nearest often recovers a plan that meets the budget with no slack (0.5 and 0.7 -> 0.6
        # exactly), which rounding down loses; keep it when it truly meets the budget and costs less
        near_w = [[min(cap, int(round(s * scale))) for s, _ in g] for g in groups]
        near, near_picks = _dp(groups, near_w, cap)
        if near_picks and near < upper and \
                sum(g[k][0] for g, k in zip(groups, near_picks)) >= required * (1 - 1e-9):
            upper, picks = near, near_picks
        if math.isfinite(upper) or resolution >= 256_000:
            break
        resolution *= 4  # rounding down lost the only feasible sets: refine the grid
    if not math.isfinite(upper):
        raise PrunelensError("no choice of options meets the budget at the solver's resolution (it is met only with "
                             "no slack); loosen the budget slightly")
    return picks, {"cost": upper, "lower_bound": lower, "gap": max(0.0, upper - lower), "resolution": cap}


# -- allocations -----------------------------------------------------------------------------
@dataclass
class Choice:
    """One compressed unit of an allocation."""

    unit: str
    method: str  # canonical spec
    predicted_kl: float | None = None
    saving: float = 0.0


@dataclass
class Allocation:
    choices: list[Choice]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class AllocContext:
    """Everything an allocator may look at."""

    ds: Any  # probe store (xarray Dataset) or None
    budget: Budget
    temperature: float
    methods: list[str] | None = None  # store labels or method names to choose from (None = all in the store)
    kind: str | None = None  # unit kind to allocate over (None = every kind the store holds)
    locality: str = "propagated"
    timing: str = "teacher_forced"
    loaded: Any = None
    calib_ids: Any = None
    dense_bits: float = DENSE_BITS
    _sizes: UnitSizes | None = None

    @property
    def model_id(self) -> str:
        if self.ds is not None and "model_id" in self.ds.attrs:
            return str(self.ds.attrs["model_id"])
        if self.loaded is not None:
            return str(self.loaded.model_id)
        raise PrunelensError("the allocator needs a probe store or a loaded model")

    def sizes(self) -> UnitSizes:
        from prunelens.plan.budgets import unit_sizes

        if self._sizes is None:
            self._sizes = unit_sizes(self.loaded if self.loaded is not None else self.model_id)
        return self._sizes

    def model(self) -> Any:
        """The LoadedModel (loaded from the store's model id on first use; config hash checked)."""
        if self.loaded is None:
            from prunelens.model.loading import load_model

            self.loaded = load_model(self.model_id)
        want = None if self.ds is None else self.ds.attrs.get("config_hash")
        if want and want != self.loaded.config_hash:
            raise PrunelensError(f"model config hash {self.loaded.config_hash} does not match the store's {want}")
        return self.loaded

    def calibration(self, samples: int = 32, length: int = 256) -> Any:
        import torch

        if self.calib_ids is None:
            from prunelens.text.corpora import token_windows

            self.calib_ids = token_windows(self.model().tokenizer, samples, length, split="calib")
        return torch.as_tensor(self.calib_ids)

    def store_labels(self) -> list[str]:
        """The store's method labels selected by ``methods`` (exact labels or names; ``a+b`` unions)."""
        if self.ds is None:
            raise PrunelensError("this allocator needs a probe store")
        labels = [str(v) for v in self.ds["method"].values]
        if not self.methods:
            return labels
        out: list[str] = []
        for want in self.methods:
            if ":" in want:  # one spec: matched by its canonical identity (wanda:sparsity=0.5 is the store's wanda)
                from prunelens.compression.methods import match_spec

                exact = match_spec(want, labels)
                hit = [exact] if exact is not None else []
            else:  # a bare name: every level of that method in the store
                hit = [lab for lab in labels if lab == want or lab.split(":", 1)[0] == want]
            if not hit:
                raise PrunelensError(f"method {want!r} is not in the store; it has {', '.join(labels)}")
            out += [h for h in hit if h not in out]
        return out

    def method_names(self) -> list[str]:
        """The distinct method names asked for (from ``methods``, else the store's)."""
        names = [m.split(":", 1)[0] for m in (self.methods or self.store_labels())]
        return list(dict.fromkeys(names))


class Allocator(Parameterized):
    """Base class of an allocation strategy: ``allocate(ctx)`` returns one ``Choice`` per compressed unit."""

    kind = "allocator"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs: ClassVar[str] = "store"  # "store" | "model" | "none"
    params: ClassVar[dict[str, Param]] = {}

    def allocate(self, ctx: AllocContext) -> Allocation:
        raise NotImplementedError


def allocator_registry() -> dict[str, tuple[str, type[Allocator]]]:
    """allocator name -> (plugin name, Allocator class) from every plugin."""
    from prunelens.plugins import registry

    return registry("register_allocators", key=lambda cls: cls.name)


def get_allocator(name: str, **params: Any) -> Allocator:
    reg = allocator_registry()
    if name not in reg:
        raise unknown("allocator", name, reg)
    return reg[name][1](**params)


# -- options from a store ----------------------------------------------------------------------
@dataclass(frozen=True)
class UnitOption:
    unit: str
    method: str
    predicted_kl: float
    saving: float


def store_options(ctx: AllocContext, variable: str = "kl_pred") -> dict[int, list[UnitOption]]:
    """Per layer, every (unit, spec) with a finite store mean of ``variable`` (``kl_pred`` or the measured ``kl``),
    with its saving under the budget."""
    from prunelens.compression.methods import parse_method
    from prunelens.plan.ranking import resolve_method, store_means, store_units

    sizes = ctx.sizes()
    units = store_units(ctx.ds, ctx.kind)
    out: dict[int, list[UnitOption]] = {}
    for label in ctx.store_labels():
        method = parse_method(resolve_method(ctx.ds, label))
        effect = option_effect(method)
        ok = [u for u in units if u.kind in method.unit_kinds]
        if not ok:
            continue
        means = store_means(ctx.ds, method=label, temperature=ctx.temperature, locality=ctx.locality,
                            timing=ctx.timing, units=ok)[variable]
        for u, kl in zip(ok, means):
            if not math.isfinite(float(kl)):
                continue
            out.setdefault(u.layer, []).append(
                UnitOption(u.name, label, float(kl), saving(ctx.budget, u, effect, sizes, ctx.dense_bits)))
    if not out:
        raise PrunelensError("the store has no finite predicted KL for the chosen methods and units")
    return out


def layer_combinations(options: list[UnitOption]) -> list[tuple[UnitOption, ...]]:
    """One layer's choices: dense (), one block option, or an attention and/or MLP option (never block + sublayer)."""
    by_kind: dict[str, list[UnitOption]] = {k: [] for k in KINDS}
    for o in options:
        by_kind[Unit.parse(o.unit).kind].append(o)
    combos: list[tuple[UnitOption, ...]] = [()]
    combos += [(o,) for o in by_kind["block"]]
    for a, m in itertools.product([None, *by_kind["attn"]], [None, *by_kind["mlp"]]):
        picked = tuple(x for x in (a, m) if x is not None)
        if picked:
            combos.append(picked)
    return combos



def within_band(ctx: AllocContext, options: dict[int, list[UnitOption]],
                band: float) -> tuple[dict[int, list[UnitOption]], bool]:
    """The options whose level lies within the budget's target +- ``band``, and whether dense does."""
    from prunelens.compression.methods import parse_method
    from prunelens.plan.budgets import option_level

    target = ctx.budget.value
    level = {o.method: option_level(ctx.budget, option_effect(parse_method(o.method)), ctx.dense_bits)
             for opts in options.values() for o in opts}
    kept = {i: [o for o in opts if abs(level[o.method] - target) <= band + 1e-9] for i, opts in options.items()}
    dense_ok = abs(option_level(ctx.budget, None, ctx.dense_bits) - target) <= band + 1e-9
    return {i: opts for i, opts in kept.items() if opts}, dense_ok


def choice_covers_layer(combo: tuple[UnitOption, ...]) -> bool:
    """Whether a layer's choice compresses every weight of it (``units.covers_layer``)."""
    return covers_layer(Unit.parse(o.unit).kind for o in combo)


def layer_choices(ctx: AllocContext, options: dict[int, list[UnitOption]],
                  band: float | None) -> list[list[tuple[UnitOption, ...]]]:
    """Per layer, the choices an allocator picks from (``layer_combinations``); with a ``band`` only levels within
    it, and where dense lies outside it only choices that cover the whole layer (when the layer has any)."""
    dense_ok = True
    if band is not None:
        options, dense_ok = within_band(ctx, options, band)
    combos = [layer_combinations(options.get(i, [])) for i in range(ctx.sizes().num_layers)]
    if not dense_ok:
        combos = [[c for c in cs if choice_covers_layer(c)] or cs for cs in combos]
    return combos

# -- the public entry point ----------------------------------------------------------------------
def apply_order(choices: list[Choice]) -> list[Choice]:
    """Layer by layer; attention before MLP within a layer (the order apply compresses them in)."""
    from prunelens.compression.per_unit import KIND_ORDER

    return sorted(choices, key=lambda c: (Unit.parse(c.unit).layer, KIND_ORDER[Unit.parse(c.unit).kind]))


def check_choices(choices: list[Choice]) -> None:
    """No unit twice, and never a block together with one of its sublayers."""
    hit = first_overlap(Unit.parse(c.unit) for c in choices)
    if hit is not None:
        raise PrunelensError(f"allocation chose overlapping units in layer {hit[0].layer} ({hit[0]})")


def allocate_plan(ds: Any, *, allocator: str = "knapsack", budget: Any, temperature: float,
                  methods: list[str] | None = None, kind: str | None = None, locality: str = "propagated",
                  timing: str = "teacher_forced", store_path: str | None = None, loaded: Any = None,
                  calib_ids: Any = None, dense_bits: float = DENSE_BITS, **allocator_params: Any) -> Any:
    """Run an allocator and return a schema-2 ``Plan`` whose units carry their own method specs."""
    from prunelens.plan.document import Plan, PlanUnit

    b = parse_budget_spec(budget)
    alloc = get_allocator(allocator, **allocator_params)
    if ds is not None:
        from prunelens_store import StoreView

        StoreView.of(ds).temperature(temperature, exact=True)  # a clear error for a temperature the store lacks
    ctx = AllocContext(ds, b, float(temperature), list(methods) if methods else None, kind, locality, timing,
                       loaded=loaded, calib_ids=calib_ids, dense_bits=dense_bits)
    result = alloc.allocate(ctx)
    choices = apply_order(result.choices)
    if not choices:
        raise PrunelensError(f"the allocation leaves every unit dense (budget {b.text})")
    check_choices(choices)
    sizes = ctx.sizes()
    total_saving = sum(c.saving for c in choices)
    need = requirement(b, sizes, dense_bits)
    if total_saving < need * (1 - 1e-6) - 1e-9:
        raise PrunelensError(f"allocator {allocator!r} does not meet budget {b.text}: it reaches "
                             f"{achieved(b, total_saving, sizes, dense_bits):.6g}")
    units: list[PlanUnit] = []
    cum: float | None = 0.0
    for c in choices:
        cum = None if cum is None or c.predicted_kl is None else cum + c.predicted_kl
        units.append(PlanUnit(unit=c.unit, method=c.method, predicted_kl=c.predicted_kl,
                              params=sizes.linear.get(c.unit), cumulative_predicted_kl=cum))
    specs = list(dict.fromkeys(c.method for c in choices))
    from prunelens.compression.methods import parse_method

    attrs = ds.attrs if ds is not None else {}
    info = {"allocator": allocator, "params": dict(alloc.values), "budget": b.text, "required": need,
            "saving": total_saving, "achieved": achieved(b, total_saving, sizes, dense_bits),
            "dense_bits": dense_bits if b.kind == "bits" else None,
            "decoder_linear_sparsity": _linear_zero_fraction(choices, sizes),
            "methods": specs, **result.info}
    model_id = str(attrs.get("model_id", getattr(loaded, "model_id", "")))
    return Plan(
        model_id=model_id, config_hash=str(attrs.get("config_hash", getattr(loaded, "config_hash", ""))),
        method=specs[0] if len(specs) == 1 else "mixed",
        method_params=dict(parse_method(specs[0]).values) if len(specs) == 1 else {},
        units=units, temperature=float(temperature), budget=b.text, strategy=allocator, kind=kind,
        locality=locality, timing=timing, num_layers=sizes.num_layers,
        store_path=None if store_path is None else str(store_path), prompts_hash=attrs.get("prompts_hash"),
        predicted_kl_total=cum, allocation=info, data=_plan_data(ds, result.info))


def _plan_data(ds: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The store's data record, with the text an allocator itself read (the search's fitness windows)."""
    from prunelens.text.corpora import plan_data

    out = plan_data(ds)
    for key, value in (info.get("search_data") or {}).items():
        out[f"search_{key}"] = value
    return out


def _linear_zero_fraction(choices: list[Choice], sizes: UnitSizes) -> float:
    """Fraction of the decoder's linear weights the choices zero or remove."""
    from prunelens.compression.methods import parse_method

    z = sum(option_effect(parse_method(c.method)).zero_fraction * sizes.linear[c.unit] for c in choices)
    return z / sizes.linear_total


def parse_allocator_spec(text: str) -> tuple[str, dict[str, str]]:
    """``owl:M=5,lmbda=0.1`` -> ("owl", {"M": "5", "lmbda": "0.1"}) (validated when the allocator is built)."""
    from prunelens.params import parse_spec

    return parse_spec(text, "allocator")  # the grammar of method, ranker and task specs


def is_allocation_budget(text: str) -> bool:
    """A budget only an allocator can meet (sparsity, bits, bytes), as opposed to a unit count or params fraction."""
    return parse_budget_spec(text).kind in ("sparsity", "bits", "bytes")

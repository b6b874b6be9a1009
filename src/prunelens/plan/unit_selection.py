"""Planning: choose a plan's units from a ranking (or by re-probing) under a budget.

This layer sits above ranking and the probe and below the commands: ``plan_from_store``
takes the safest units of one ranking (pass the ranking you already show, or let it rank
once); ``iterative_plan`` re-probes after each choice; ``make_plan`` turns chosen names
into a ``Plan`` (``prunelens.plan.document``, the data). Budget-driven mixed plans are
``prunelens.plan.allocation``'s.
"""

from __future__ import annotations

import math
from typing import Any

from prunelens.errors import PrunelensError
from prunelens.model.info import model_config, unit_param_counts
from prunelens.plan.document import Plan, PlanUnit, parse_budget
from prunelens.units import Unit, max_disjoint, overlaps


def safest_units(ranked: list[str], budget: int | float, counts: dict[str, int] | None = None,
                 total: int | None = None) -> list[str]:
    """Take units safest first: ``budget`` of them, or while their parameters fit in ``budget × total``.

    A unit overlapping one already taken (a block and a sublayer of the same layer) is skipped;
    under a parameter budget a unit too large to fit is skipped and smaller ones still considered.
    """
    chosen: list[str] = []
    used = 0
    taken: dict[int, set[str]] = {}
    for name in ranked:
        u = Unit.parse(name)
        if overlaps(u, taken.get(u.layer, set())):
            continue
        if isinstance(budget, int):
            if len(chosen) >= budget:
                break
        else:
            if counts is None or total is None:
                raise PrunelensError("a parameter-fraction budget needs the units' parameter counts")
            if used + counts[name] > budget * total:
                continue
            used += counts[name]
        chosen.append(name)
        taken.setdefault(u.layer, set()).add(u.kind)
    return chosen


def check_count_reached(budget: int | float, chosen: list[str], reach: int) -> None:
    """A unit-count budget that is not filled is an error, as a knapsack budget that cannot be met is.

    ``reach``: the most units that fit together (``units.max_disjoint``); ``chosen``: what the selection took.
    """
    if not isinstance(budget, int) or len(chosen) >= budget:
        return
    if reach < budget:
        raise PrunelensError(f"no choice of units meets the budget: the store's units (finite, not overlapping) "
                             f"reach at most {reach} of the {budget} required")
    raise PrunelensError(f"the budget asks for {budget} units; taken safest first (a block excludes its own "
                         f"sublayers) this ranking reaches {len(chosen)}: ask for at most {len(chosen)} or choose "
                         "one --kind")


def check_ranking(ranking: Any, *, by: str, temperature: float, locality: str, timing: str,
                  kind: str | None) -> None:
    """Refuse a ranking (``ranking.rank_units`` DataFrame) made with other choices than the plan's."""
    a = ranking.attrs
    want = {"by": by, "temperature": float(temperature), "locality": locality, "timing": timing}
    for key, value in want.items():
        if key in a and a[key] != value:
            raise PrunelensError(f"the ranking was made with {key}={a[key]!r}; the plan asks for {key}={value!r}")
    if kind is not None and len(ranking) and set(ranking["kind"]) != {kind}:
        held = ", ".join(sorted(set(ranking["kind"])))
        raise PrunelensError(f"the ranking holds {held} units; the plan asks for {kind}")


def plan_from_store(ds: Any, *, method: str, kind: str | None, temperature: float, by: str,
                    budget: int | float | str, locality: str = "propagated", timing: str = "teacher_forced",
                    store_path: str | None = None, loaded: Any = None, consecutive: bool | None = None,
                    ranking: Any = None, **ranker_params: Any) -> Plan:
    """One-shot plan: the safest units of one ranking under ``budget``.

    ``ranking`` is the ``rank_units`` DataFrame for these choices when the caller has it (it is
    checked, not recomputed); without it the store is ranked here, once. A ranker that spans
    blocks (``Ranker.spans_blocks``: ``angular``) on blocks with a unit-count budget n takes
    the n consecutive blocks it picks (Gromov et al.; ``consecutive=False`` ranks them one by one).
    """
    from prunelens.plan.ranking import get_ranker, nonfinite_units, rank_units

    budget = parse_budget(budget)
    calib_ids = ranker_params.pop("calib_ids", None)
    if ranking is None:
        ranking = rank_units(ds, method=method, kind=kind, temperature=temperature, by=by, locality=locality,
                             timing=timing, loaded=loaded, calib_ids=calib_ids, **ranker_params)
    else:
        check_ranking(ranking, by=by, temperature=temperature, locality=locality, timing=timing, kind=kind)
    # never plan a non-finite unit
    df = ranking[ranking["rank"].notna() & ~ranking["unit"].isin(nonfinite_units(ranking))]
    if df.empty:
        raise PrunelensError("no unit has a score (is the store's probe complete for this method?)")
    model_id = str(ds.attrs.get("model_id")) if ds is not None else loaded.model_id
    counts = total = None
    if isinstance(budget, float):
        counts, total = unit_param_counts(model_id, [Unit.parse(u) for u in df["unit"]], loaded)
    ranker = get_ranker(by, **ranker_params)
    if consecutive is None:
        consecutive = ranker.spans_blocks and kind == "block" and isinstance(budget, int)
    if consecutive:
        if not isinstance(budget, int):
            raise PrunelensError("consecutive block plans need a unit-count budget")
        from prunelens.plan.ranking import RankContext

        blocks = [Unit.parse(u) for u in ranking["unit"] if Unit.parse(u).kind == "block"]
        ctx = RankContext(ds, ranking.attrs.get("method"), "block", float(temperature), locality, timing, loaded,
                          blocks, calib_ids)
        chosen = ranker.consecutive_blocks(ctx, budget)
    else:
        chosen = safest_units(list(df["unit"]), budget, counts, total)
    check_count_reached(budget, chosen, max_disjoint(Unit.parse(u) for u in df["unit"]))
    return make_plan(ds, chosen, df.set_index("unit"), method=df.attrs["method"], kind=kind, temperature=temperature,
                     by=by, budget=budget, locality=locality, timing=timing, store_path=store_path, loaded=loaded,
                     counts=counts)


def make_plan(ds: Any, chosen: list[str], rows: Any, *, method: str, kind: str | None, temperature: float, by: str,
              budget: int | float, locality: str, timing: str, store_path: str | None, loaded: Any = None,
              counts: dict[str, int] | None = None, iterative: bool = False) -> Plan:
    """A Plan from chosen unit names and a ranking table indexed by unit."""
    from prunelens.compression.methods import parse_method

    units: list[PlanUnit] = []
    cum: float | None = 0.0
    for name in chosen:
        pred = _num(rows.loc[name, "kl_pred"]) if name in rows.index else None
        cum = cum + pred if pred is not None and cum is not None else None
        units.append(PlanUnit(unit=name, score=_num(rows.loc[name, "score"]) if name in rows.index else None,
                              predicted_kl=pred, params=None if counts is None else counts.get(name),
                              cumulative_predicted_kl=cum))
    attrs = ds.attrs if ds is not None else {}
    try:
        params = dict(parse_method(method).values)
    except PrunelensError:
        params = {}
    if loaded is not None:
        num_layers = loaded.adapter.num_layers
    else:
        try:
            num_layers = int(model_config(str(attrs["model_id"])).num_hidden_layers)
        except (PrunelensError, KeyError, AttributeError):
            num_layers = int(max(ds["layer"].values)) + 1  # the store's own units (all layers when probed whole)
    return Plan(
        model_id=str(attrs.get("model_id", getattr(loaded, "model_id", ""))),
        config_hash=str(attrs.get("config_hash", getattr(loaded, "config_hash", ""))),
        method=method, method_params=params, units=units, temperature=float(temperature), budget=budget,
        strategy=by, kind=kind, locality=locality, timing=timing, iterative=iterative, num_layers=num_layers,
        store_path=None if store_path is None else str(store_path),
        prompts_hash=attrs.get("prompts_hash"), predicted_kl_total=cum if units else None,
    )


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _reprobe_inputs(ds: Any, loaded: Any, temperature: float) -> tuple[Any, Any, int]:
    """What every round of ``iterative_plan`` probes with: the store's prompts, its settings, the pad id."""
    from prunelens.plan.apply import store_prompt_ids
    from prunelens.probe.engine import ProbeSettings
    from prunelens.probe.prompts import Prompts

    prompts = Prompts(store_prompt_ids(ds), source="store")
    settings = ProbeSettings(steps=int(ds.sizes["step"]), temperatures=(float(temperature),),
                             localities=("propagated",), timings=("teacher_forced",),
                             readout=str(ds.attrs.get("readout", "norm")))
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    return prompts, settings, pad_id


def _reprobe(loaded: Any, method: Any, chosen: list[str], fits: list[Unit], inputs: tuple[Any, Any, int],
             progress: Any) -> dict[str, float]:
    """One round of ``iterative_plan``: each unit of ``fits`` probed on the model with ``chosen`` already
    compressed (whose own greedy continuation is the reference); unit name -> mean predicted KL."""
    import numpy as np

    from prunelens.plan.apply import perturbed
    from prunelens.probe.engine import ProbeEngine

    prompts, settings, pad_id = inputs
    scores: dict[str, float] = {}
    with perturbed(method, loaded.adapter, [Unit.parse(c) for c in chosen]):
        engine = ProbeEngine(loaded.adapter, prompts, settings, pad_id=pad_id)
        engine.prepare()
        for u in fits:
            if progress:
                progress(f"round {len(chosen) + 1}: {u.name}")
            scores[u.name] = float(np.nanmean(engine.measure(method, u).arrays["kl_pred"]))
    return scores


def iterative_plan(ds: Any, *, method: str, kind: str | None, temperature: float, budget: int | float | str,
                   store_path: str | None = None, loaded: Any = None,
                   progress: Any = None) -> Plan:
    """Greedy plan: take the unit of lowest predicted KL, re-probe the rest on the already-compressed model, repeat.

    Each round re-probes with the probe engine on the store's prompts: the model with the
    chosen units already perturbed is the new reference (its own greedy continuation,
    teacher-forced, propagated to the output) and every remaining candidate is perturbed on
    top, scored by the mean ``Var_p(Δz)/(2T²)``. A unit's
    ``predicted_kl`` is its increment when chosen; the cumulative sum is the plan's prediction.
    Methods that need calibration statistics are not supported here (use the one-shot plan).
    """
    from prunelens.compression.methods import parse_method
    from prunelens.model.loading import load_model
    from prunelens.plan.ranking import resolve_method, store_units

    budget = parse_budget(budget)
    label = resolve_method(ds, method)
    m = parse_method(label)
    if m.calibration != "none":
        raise PrunelensError(f"iterative plans support methods without calibration; {m.name!r} needs {m.calibration}")
    if loaded is None:
        loaded = load_model(str(ds.attrs["model_id"]))
    if ds.attrs.get("config_hash") and ds.attrs["config_hash"] != loaded.config_hash:
        raise PrunelensError("the store was made for another model (config hash differs)")
    candidates = [u for u in store_units(ds, kind) if u.kind in m.unit_kinds]
    counts = total = None
    if isinstance(budget, float):
        counts, total = unit_param_counts(loaded.model_id, candidates, loaded)
    reach = max_disjoint(candidates)
    if isinstance(budget, int) and reach < budget:  # before any re-probing
        check_count_reached(budget, [], reach)
    probe_inputs = _reprobe_inputs(ds, loaded, temperature)
    chosen: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    while True:
        step = len(chosen) + 1
        fits = [u for u in candidates if u.name not in chosen
                and safest_units(chosen + [u.name], budget if isinstance(budget, float) else step,
                                 counts, total) == chosen + [u.name]]
        if not fits or (isinstance(budget, int) and len(chosen) >= budget):
            break
        scores = _reprobe(loaded, m, chosen, fits, probe_inputs, progress)
        best = min(fits, key=lambda u: scores[u.name])
        chosen.append(best.name)
        rows[best.name] = {"score": scores[best.name], "kl_pred": scores[best.name]}
    if not chosen:
        raise PrunelensError("no unit fits the budget")
    check_count_reached(budget, chosen, reach)
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    return make_plan(ds, chosen, table, method=label, kind=kind, temperature=temperature, by="kl_pred", budget=budget,
                     locality="propagated", timing="teacher_forced", store_path=store_path, loaded=loaded,
                     counts=counts, iterative=True)

"""Sanity checks on a plan before it is written or applied: no empty plan, no emptied model, no overlaps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prunelens.errors import PrunelensError
from prunelens.model.info import num_layers_of
from prunelens.plan.document import Plan
from prunelens.units import Unit, covers_layer, first_overlap


def check_units_disjoint(names: Iterable[str]) -> None:
    """One-line error when a unit is listed twice or a block is listed with one of its sublayers."""
    hit = first_overlap(Unit.parse(str(name)) for name in names)
    if hit is None:
        return
    unit, earlier = hit
    if unit == earlier:
        raise PrunelensError(f"the plan lists unit {unit.name} twice; each unit may appear once")
    block, sub = (unit, earlier) if unit.kind == "block" else (earlier, unit)
    raise PrunelensError(f"the plan lists block {block.name} and its sublayer {sub.name}; they overlap")


def removed_layers(units: Iterable[tuple[Unit, str]]) -> set[int]:
    """Layers a plan removes entirely: blocks of a method that removes units (``Method.removes_unit``: drop),
    and layers whose attention and MLP are both removed."""
    from prunelens.compression.methods import removes_unit

    removed: dict[int, set[str]] = {}
    for unit, method in units:
        if removes_unit(str(method)):
            removed.setdefault(unit.layer, set()).add(unit.kind)
    return {layer for layer, kinds in removed.items() if covers_layer(kinds)}


def check_plan_sane(plan: Plan, ds: Any = None) -> None:
    """Refuse a plan that selects no unit, lists overlapping units, or removes every layer of the model."""
    if not plan.units:
        raise PrunelensError(f"the budget {plan.budget} selects no unit; raise --budget (or check the store's "
                             "results: units with non-finite results are never planned)")
    check_units_disjoint(u.unit for u in plan.units)
    gone = removed_layers(plan.unit_methods())
    if not gone:
        return
    model_id = plan.model_id or (ds.attrs.get("model_id") if ds is not None else None)
    n = num_layers_of(model_id)
    if n is not None and set(range(n)) <= gone:
        raise PrunelensError(f"the plan would remove every one of the model's {n} layers (budget {plan.budget}); "
                             "lower --budget")

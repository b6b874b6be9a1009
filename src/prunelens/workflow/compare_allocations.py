"""Allocations side by side at one budget: each plan applied and scored on held-out text.

``compare_allocations`` makes one plan per allocator (``knapsack``, ``uniform``...) from a
level-sweep store, compresses a fresh copy of the model with it exactly as ``prunelens apply``
does (``apply.compress_with_plan``) and scores held-out perplexity next to the dense model's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunelens.plan.document import Plan


@dataclass
class AllocationScore:
    """One allocator's plan and what it does on held-out text."""

    allocator: str
    plan: Plan
    heldout_ppl: float

    @property
    def achieved(self) -> float | None:
        value = self.plan.allocation.get("achieved")
        return None if value is None else float(value)

    def levels(self, num_layers: int) -> str:
        """How many layers got each level, dense included: ``sparsity=0.3 ×12 · dense ×2``."""
        counts = Counter(_level(u.method or self.plan.method) for u in self.plan.units)
        dense = num_layers - len({u.unit.split(".")[0] for u in self.plan.units})
        parts = [f"{level} ×{n}" for level, n in sorted(counts.items())] + ([f"dense ×{dense}"] if dense else [])
        return " · ".join(parts)


def _level(spec: str) -> str:
    """A spec's parameter values, defaults included (``magnitude`` -> ``sparsity=0.5``)."""
    from prunelens.compression.methods import parse_method

    values = {k: v for k, v in parse_method(spec).values.items() if v is not None}
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) or spec


def compare_allocations(ds: Any, *, model: str, budget: str, temperature: float, heldout_ids: Any,
                        allocators: Sequence[str] = ("knapsack", "uniform"), kind: str | None = "block",
                        store_path: str | None = None, dense: Any = None) -> tuple[float, list[AllocationScore]]:
    """(dense held-out perplexity, one ``AllocationScore`` per allocator, in the order given).

    ``dense``: the model already loaded (only read); each plan compresses its own fresh copy.
    """
    from prunelens.evaluation.perplexity import perplexity
    from prunelens.model.loading import load_model
    from prunelens.plan.allocation import allocate_plan
    from prunelens.plan.apply import compress_with_plan

    dense_ppl = perplexity(dense if dense is not None else load_model(model), heldout_ids)
    scores = []
    for name in allocators:
        plan = allocate_plan(ds, allocator=name, budget=budget, temperature=temperature, kind=kind,
                             store_path=store_path)
        loaded = load_model(model)  # a fresh dense copy for each plan
        compress_with_plan(loaded, plan, progress=False)
        scores.append(AllocationScore(name, plan, perplexity(loaded, heldout_ids)))
        del loaded
    return dense_ppl, scores


def decision_table(dense_ppl: float, scores: list[AllocationScore], num_layers: int, budget: str) -> Any:
    """A Rich table: each allocator's budget reached, predicted KL, held-out perplexity and levels."""
    from rich.table import Table

    from prunelens.safe_text import esc

    t = Table(title=f"the decision at {esc(budget)}: plans applied, scored on held-out text (dense perplexity "
                    f"{dense_ppl:.2f})", title_justify="left")
    for col, justify in (("allocator", "left"), ("reached", "right"), ("predicted KL", "right"),
                         ("held-out ppl", "right"), ("× dense", "right"), ("levels per layer", "left")):
        t.add_column(col, justify=justify)
    for s in scores:
        kl = s.plan.predicted_kl_total
        t.add_row(esc(s.allocator), "-" if s.achieved is None else f"{s.achieved:.3f}",
                  "-" if kl is None else f"{kl:.4g}", f"{s.heldout_ppl:.2f}", f"{s.heldout_ppl / dense_ppl:.2f}",
                  esc(s.levels(num_layers)))
    return t

"""The demo's decision step: knapsack and uniform plans at one budget, each applied and scored on held-out text."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rank_helpers import random_ids, save_tiny, synthetic_store

from prunelens.compression.methods import parse_method
from prunelens.compression.sequential import compress_model
from prunelens.evaluation.perplexity import perplexity
from prunelens.model.loading import load_model
from prunelens.units import Unit
from prunelens.workflow.compare_allocations import compare_allocations, decision_table

LEVELS = ("magnitude:sparsity=0.3", "magnitude:sparsity=0.5", "magnitude:sparsity=0.7")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = save_tiny(tmp_path_factory.mktemp("decision") / "tiny", layers=4)
    loaded = load_model(str(path))
    ds = synthetic_store(num_layers=4, kinds=("block",), methods=LEVELS, seed=3,
                         attrs={"model_id": str(path), "config_hash": loaded.config_hash, "complete": True})
    return path, ds


def test_knapsack_and_uniform_applied_and_scored(setup):
    path, ds = setup
    ids = random_ids(batch=3, length=16, seed=9)
    dense_ppl, (knap, uni) = compare_allocations(ds, model=str(path), budget="sparsity=0.5", temperature=1.0,
                                                 heldout_ids=ids)
    assert dense_ppl == pytest.approx(perplexity(load_model(str(path)), ids), rel=1e-6)
    # uniform: every block at the budget's level, scored exactly as compressing them by hand scores
    assert [(u.unit, parse_method(u.method).values["sparsity"]) for u in uni.plan.units] == \
        [(f"L{i}", 0.5) for i in range(4)]
    by_hand = load_model(str(path))
    compress_model(by_hand, parse_method("magnitude:sparsity=0.5"), [Unit(i, "block") for i in range(4)],
                   progress=False)
    assert uni.heldout_ppl == pytest.approx(perplexity(by_hand, ids), rel=1e-6)
    # the knapsack minimises the summed predicted KL: never above uniform's (a feasible choice of its own)
    assert knap.plan.predicted_kl_total <= uni.plan.predicted_kl_total + 1e-12
    assert knap.achieved >= 0.5 - 1e-9 and uni.achieved == pytest.approx(0.5)
    assert math.isfinite(knap.heldout_ppl) and knap.heldout_ppl > 0
    counts = {lvl: sum(parse_method(u.method).spec == parse_method(lvl).spec for u in knap.plan.units)
              for lvl in LEVELS}
    assert sum(counts.values()) == len(knap.plan.units)
    expected = " · ".join(f"{lvl.split(':')[1]} ×{n}" for lvl, n in sorted(counts.items()) if n)
    dense = 4 - len(knap.plan.units)
    assert knap.levels(4) == expected + (f" · dense ×{dense}" if dense else "")


def test_decision_table_rows(setup):
    from rich.console import Console

    path, ds = setup
    ids = random_ids(batch=2, length=12, seed=1)
    dense_ppl, scores = compare_allocations(ds, model=str(path), budget="sparsity=0.5", temperature=1.0,
                                            heldout_ids=ids, allocators=("uniform",))
    console = Console(width=200, record=True)
    console.print(decision_table(dense_ppl, scores, 4, "sparsity=0.5"))
    text = console.export_text()
    assert f"{scores[0].heldout_ppl:.2f}" in text and f"{scores[0].heldout_ppl / dense_ppl:.2f}" in text
    assert "sparsity=0.5 ×4" in text and np.isclose(scores[0].achieved, 0.5)

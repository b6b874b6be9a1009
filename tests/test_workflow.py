"""The workflow layer: tables from a synthetic store checked against numpy, plan export, summaries."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from rank_helpers import synthetic_store

from prunelens.workflow.export import export_plan
from prunelens.workflow.summaries import apply_lines, compress_line
from prunelens.workflow.tables import (
    eval_comparison_table,
    eval_table,
    plan_table,
    probe_summary_line,
    probe_summary_table,
    ranking_json,
    ranking_table,
    validation_json,
    validation_table,
)

CELL = dict(method="drop", locality="propagated", timing="teacher_forced")


def _columns(table) -> dict[str, list[str]]:
    return {str(c.header): [str(x) for x in c._cells] for c in table.columns}


def _num(text: str) -> float:
    return float(text)


def _unit_mean(ds, var: str, unit: str, temperature: float = 1.0, **sel) -> float:
    """Independent mean over samples and steps, in float64."""
    a = ds[var].sel({"unit": unit, **CELL, **sel})
    if "temperature" in a.dims:
        a = a.sel(temperature=temperature)
    return float(np.asarray(a.values, dtype=np.float64).mean())


@pytest.fixture(scope="module")
def store_and_ranking():
    from prunelens.plan.ranking import rank_units

    ds = synthetic_store(num_layers=5, seed=7)
    df = rank_units(ds, method="drop", kind="mlp", temperature=1.0, by="kl_pred")
    return ds, df


def test_ranking_table_holds_the_store_means_safest_first(store_and_ranking):
    ds, df = store_and_ranking
    cols = _columns(ranking_table(df, "title"))
    names = [f"L{i}.mlp" for i in range(5)]
    pred = {u: _unit_mean(ds, "kl_pred", u) for u in names}
    order = sorted(names, key=pred.__getitem__)
    assert cols["unit"] == order and cols["rank"] == ["1", "2", "3", "4", "5"]
    assert "score (kl_pred)" not in cols  # ranked by predicted KL: no separate score column
    for k, u in enumerate(order):
        assert _num(cols["predicted KL"][k]) == pytest.approx(pred[u], rel=1e-3)
        assert _num(cols["measured KL"][k]) == pytest.approx(_unit_mean(ds, "kl", u), rel=1e-3)
        for space, label in (("embedding", "1-cos emb"), ("logit", "1-cos logit"), ("probability", "1-cos prob")):
            assert _num(cols[label][k]) == pytest.approx(_unit_mean(ds, "cos_dev", u, space=space), rel=1e-3)


def test_ranking_table_by_another_strategy_shows_its_score(store_and_ranking):
    _, df = store_and_ranking
    other = df.copy()
    other.attrs = {**df.attrs, "by": "late_first"}
    other["score"] = np.arange(len(other), dtype=float) + 0.5
    cols = _columns(ranking_table(other))
    assert [_num(x) for x in cols["score (late_first)"]] == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert list(cols)[:3] == ["rank", "unit", "score (late_first)"]


def test_ranking_json_rows_are_the_ranking(store_and_ranking):
    ds, df = store_and_ranking
    out = ranking_json(df, store="s.zarr", kind="mlp")
    assert (out["store"], out["method"], out["kind"], out["temperature"], out["by"]) == ("s.zarr", "drop", "mlp", 1.0, "kl_pred")
    assert [u["rank"] for u in out["units"]] == [1, 2, 3, 4, 5]
    for row in out["units"]:
        assert row["kl_pred"] == pytest.approx(_unit_mean(ds, "kl_pred", row["unit"]), rel=1e-5)
    kl = [u["kl_pred"] for u in out["units"]]
    assert kl == sorted(kl)


def test_plan_table_lists_the_chosen_units_with_cumulative_kl(store_and_ranking):
    from prunelens.plan.unit_selection import plan_from_store

    ds, df = store_and_ranking
    plan = plan_from_store(ds, method="drop", kind="mlp", temperature=1.0, by="kl_pred", budget=3, ranking=df)
    cols = _columns(plan_table(plan))
    assert cols["unit"] == list(df["unit"][:3])
    pred = [_unit_mean(ds, "kl_pred", u) for u in cols["unit"]]
    for k in range(3):
        assert _num(cols["predicted KL"][k]) == pytest.approx(pred[k], rel=1e-3)
        assert _num(cols["cumulative predicted KL"][k]) == pytest.approx(sum(pred[: k + 1]), rel=1e-3)


def test_validation_table_and_json():
    class Plan:
        method, temperature = "drop", 0.7
        predicted_kl_total, measured_kl_total, measured = 0.3, 0.45, {"kl": 0.45}

    rows = [{"k": 1, "unit": "L1.mlp", "predicted_kl": 0.1, "cumulative_predicted_kl": 0.1, "measured_kl": 0.2,
             "taylor_kl_of_set": 0.12, "top1_agree": 0.9},
            {"k": 2, "unit": "L3.mlp", "predicted_kl": 0.2, "cumulative_predicted_kl": 0.3, "measured_kl": 0.45,
             "taylor_kl_of_set": 0.33, "top1_agree": 0.8123}]
    cols = _columns(validation_table(Plan(), rows))
    assert [_num(x) for x in cols["meas/Σpred"]] == pytest.approx([2.0, 1.5])
    assert [_num(x) for x in cols["Σ pred KL"]] == pytest.approx([0.1, 0.3])
    assert cols["top-1"] == ["0.900", "0.812"]
    out = validation_json(Plan(), rows, plan_path="p.json", store="s.zarr", checkpoint=None)
    assert list(out) == ["plan", "store", "checkpoint", "method", "temperature", "predicted_kl_total",
                         "measured_kl_total", "measured", "rows"]
    assert out["rows"] is rows and out["measured_kl_total"] == 0.45


def test_eval_tables():
    one = _columns(eval_table({"ppl": {"ppl": 12.3456, "n": 4.0}, "mc": {"acc": 0.5}}, {"ppl": 1.25}))
    assert one["task"] == ["ppl", "", "mc"] and one["value"] == ["12.3456", "4", "0.5000"]
    assert one["seconds"] == ["1.2", "", "0.0"]
    both = _columns(eval_comparison_table({"dense": {"mc": {"acc": 0.5, "n": 3}},
                                           "plan": {"mc": {"acc": 0.25}, "gen": {"agree": 0.75}}}))
    assert list(both) == ["task", "metric", "dense", "plan"]
    assert both["task"] == ["gen", "mc"] and both["dense"] == ["-", "0.5"] and both["plan"] == ["0.75", "0.25"]


def test_probe_summary_table_holds_means_over_units_samples_steps():
    ds = synthetic_store(num_layers=3, seed=2, temperatures=(0.7, 1.0))
    rho = {"drop": {"propagated": {"teacher_forced": {"1": 0.875}}}}
    cols = _columns(probe_summary_table(ds, rho))
    # rows: method × locality × timing × T; the (drop, propagated, teacher_forced) block is the third
    row = 2 * 2 + 1  # local(forced, free) then propagated/forced; T=1.0 is its second row
    kl = np.asarray(ds["kl"].sel({**CELL, "temperature": 1.0}).values, dtype=np.float64).mean()
    assert cols["T"][row] == "1" and _num(cols["KL"][row]) == pytest.approx(kl, rel=1e-2)
    cos_p = np.asarray(ds["cos_dev"].sel({**CELL, "space": "probability", "temperature": 1.0}).values, dtype=np.float64).mean()
    assert _num(cols["1-cos p"][row]) == pytest.approx(cos_p, rel=1e-2)
    assert cols["ρ(pred,KL)"][row] == "0.875" and cols["ρ(pred,KL)"][row - 1] == "-"
    assert cols["where"][row - 1] == "prop." and cols["timing"][row - 1] == "forced"
    line = probe_summary_line("s.zarr", {"cells_done": 3, "cells_total": 4, "complete": False})
    assert line.startswith("s.zarr: 3/4 cells, non-finite cells: 0, complete: False.")


# -- export -------------------------------------------------------------------------------------
class _Plan:
    def __init__(self, yaml_ok: bool = True):
        self.yaml_ok = yaml_ok

    def to_json(self) -> str:
        return json.dumps({"schema_version": 2, "units": ["L1"]}, indent=2)

    def to_mergekit_yaml(self) -> str:
        if not self.yaml_ok:
            from prunelens.errors import PrunelensError

            raise PrunelensError("mergekit passthrough configs express block drops only")
        return "slices: []\n"


def test_export_plan_writes_json_and_mergekit_atomically_with_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        written = export_plan(_Plan(), tmp_path / "p.json", mergekit_path=tmp_path / "p.yaml")
    finally:
        os.umask(old)
    assert written == [tmp_path / "p.json", tmp_path / "p.yaml"]
    assert json.loads((tmp_path / "p.json").read_text())["units"] == ["L1"]
    assert (tmp_path / "p.yaml").read_text() == "slices: []\n"
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.yaml"]  # no temporary files left


def test_export_plan_writes_nothing_when_a_format_fails(tmp_path):
    from prunelens.errors import PrunelensError

    with pytest.raises(PrunelensError, match="block drops"):
        export_plan(_Plan(yaml_ok=False), tmp_path / "p.json", mergekit_path=tmp_path / "p.yaml")
    assert list(tmp_path.iterdir()) == []


def test_export_plan_to_stdout(tmp_path, capsys):
    assert export_plan(_Plan(), "-") == []
    assert json.loads(capsys.readouterr().out)["schema_version"] == 2


def test_export_plan_recipe_of_a_real_plan(store_and_ranking, tmp_path):
    from prunelens.plan.document import Plan
    from prunelens.plan.unit_selection import plan_from_store

    ds, df = store_and_ranking
    plan = plan_from_store(ds, method="drop", kind="mlp", temperature=1.0, by="kl_pred", budget=2, ranking=df)
    written = export_plan(plan, tmp_path / "plan.json")
    assert written == [tmp_path / "plan.json"]
    assert Plan.load(tmp_path / "plan.json").unit_names == plan.unit_names


# -- summaries ----------------------------------------------------------------------------------
def test_compress_and_apply_lines():
    s = {"seconds": 2.04, "sparsity": 0.5, "layers": [{}], "heldout_ppl_before": 10.0, "heldout_ppl_after": 12.5}
    assert compress_line("wanda", "out/w", s) == ("wanda: wrote out/w in 2.0s; sparsity of compressed linears 0.500; "
                                                  "held-out perplexity 10.00 -> 12.50")
    d = {"seconds": 1.0, "layers_before": 4, "layers_after": 3}
    assert compress_line("drop", "o", d) == "drop: wrote o in 1.0s; layers 4 -> 3"

    class Plan:
        method, units, unit_names, is_mixed = "drop", ["a", "b"], ["L1", "L2.mlp"], False

    lines = apply_lines(Plan(), "ck", {"checkpoint_bytes": 2.5e6, "zero_fraction": 0.25, "linear_zero_or_removed": 0.5,
                                       "seconds": 1.23456, "dropped_blocks": ["L1"], "dropped_sublayers": []})
    assert lines == ["applied drop to L1, L2.mlp -> ck",
                     "  checkpoint 2.5 MB (safetensors); zero weights 25.0% of the decoder's linear weights stored, "
                     "50.0% zero or removed",
                     "  seconds 1.235; dropped blocks L1; dropped sublayers -"]

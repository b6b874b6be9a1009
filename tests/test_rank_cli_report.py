"""The rank / plan / validate / report commands on a synthetic Zarr store over a tiny saved llama."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from rank_helpers import save_tiny, synthetic_store

from prunelens.cli import main
from prunelens.model.loading import load_model
from prunelens.workflow.report import fmt


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny(root / "llama4", layers=4)
    loaded = load_model(str(model_dir))
    ds = synthetic_store(num_layers=4, seed=7, attrs={"model_id": str(model_dir), "config_hash": loaded.config_hash,
                                                      "readout": "norm", "complete": True})
    store = root / "probe.zarr"
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    return root, store, ds


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_rank_prints_units_in_ranked_order(setup):
    root, store, ds = setup
    res = _run("rank", store, "--method", "drop", "--kind", "mlp", "-T", "0.7", "--csv", root / "r.csv")
    assert res.exit_code == 0, res.output
    mean = {u: float(np.asarray(ds["kl_pred"].sel({"method": "drop", "unit": u, "locality": "propagated",
                                                   "timing": "teacher_forced", "temperature": 0.7}).values).mean())
            for u in (f"L{i}.mlp" for i in range(4))}
    expected = sorted(mean, key=mean.get)
    positions = [res.output.index(u + " ") for u in expected]
    assert positions == sorted(positions)
    import pandas as pd

    assert list(pd.read_csv(root / "r.csv")["unit"]) == expected


def test_rank_bad_temperature_is_one_red_line(setup):
    _, store, _ = setup
    res = CliRunner().invoke(main, ["rank", str(store), "-T", "0.3"])
    assert res.exit_code == 1
    assert "temperature 0.3 is not in the store" in res.output and "Traceback" not in res.output


def test_plan_report_and_validate_commands(setup):
    root, store, ds = setup
    plan_path, yaml_path = root / "plan.json", root / "plan.yaml"
    res = _run("plan", store, "--method", "drop", "--kind", "block", "-T", "1.0", "--budget", "2", "--out", plan_path,
               "--mergekit", yaml_path)
    assert res.exit_code == 0, res.output
    plan = json.loads(plan_path.read_text())
    assert len(plan["units"]) == 2 and plan["strategy"] == "kl_pred"
    import yaml

    ranges = [s["sources"][0]["layer_range"] for s in yaml.safe_load(yaml_path.read_text())["slices"]]
    kept = sorted(i for r in ranges for i in range(*r))
    assert kept == sorted(set(range(4)) - {int(u["unit"][1:]) for u in plan["units"]})

    before = plan_path.read_bytes()
    res = _run("validate", plan_path, "--store", store)
    assert res.exit_code == 0, res.output
    assert "measured KL" in res.output
    assert plan_path.read_bytes() == before  # a check leaves its input unchanged
    res = _run("validate", plan_path, "--store", store, "--write")
    assert res.exit_code == 0, res.output
    written = json.loads(plan_path.read_text())
    assert written["measured_kl_total"] is not None and 0 <= written["measured"]["top1_agree"] <= 1

    out = root / "report"
    res = _run("report", store, "--plan", plan_path, "--out", out)
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    for png in ("cos_curves.png", "kl_scatter.png", "steps.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    for u in ds["unit"].values:
        assert f"| {u} |" in md
    assert "## Plan" in md and "Spearman" in md
    assert f"top-1 agreement {fmt(written['measured']['top1_agree'])} on the store's prompts" in md
    assert "Warning" not in md and "## Methods side by side" not in md

"""``report`` on a store with several methods: every method side by side, ``--method`` narrows it, a plan of
another method is flagged."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from rank_helpers import synthetic_store

from prunelens.cli import main
from prunelens.plan.document import Plan, PlanUnit

METHODS = ("drop", "wanda:sparsity=0.5")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "s.zarr"
    synthetic_store(num_layers=3, seed=4, methods=METHODS,
                    attrs={"model_id": "tiny", "config_hash": "abc", "complete": True}).to_zarr(
        path, mode="w", consolidated=False, zarr_format=3)
    return path


def _report(*args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the ranks (no ties in random data), computed here independently."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _table_row(md: str, first_cell: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_method_side_by_side_with_its_own_plots(store, tmp_path):
    from prunelens.plan.ranking import load_store, rank_units

    _report("report", store, "-T", "1.0", "--out", tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Methods side by side" in md
    ds = load_store(store)
    for label, slug in zip(METHODS, ("drop", "wanda-sparsity-0.5")):
        assert f"## Method `{label}`" in md
        for plot in ("cos_curves", "kl_scatter", "steps"):
            assert (tmp_path / "r" / f"{plot}-{slug}.png").read_bytes()[:8] == PNG
            assert f"]({plot}-{slug}.png)" in md
        df = rank_units(ds, method=label, kind=None, temperature=1.0, by="kl_pred")
        row = _table_row(md, f"`{label}`")
        assert int(row[1]) == 9 and row[5] == df["unit"].iloc[0] and row[6] == df["unit"].iloc[-1]
        want = _spearman(df["kl_pred"].to_numpy(float), df["kl"].to_numpy(float))
        assert float(row[2]) == pytest.approx(want, abs=5e-4)  # printed with 3 decimals
        assert float(row[4]) == pytest.approx(df["kl"].mean(), rel=1e-3)
    assert not (tmp_path / "r" / "cos_curves.png").exists()


def test_method_narrows_to_one_with_the_plain_file_names(store, tmp_path):
    _report("report", store, "-T", "1.0", "--method", "wanda", "--out", tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Methods side by side" not in md and "## Method `" not in md and "`drop`" not in md
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["cos_curves.png", "kl_scatter.png", "steps.png"]


def _plan(tmp_path, method: str, measured: bool) -> str:
    plan = Plan(model_id="tiny", config_hash="abc", method=method, units=[PlanUnit("L1"), PlanUnit("L2.attn")],
                temperature=1.0, budget=2, strategy="kl_pred")
    if measured:
        plan.measured_kl_total = 0.125
        plan.measured["top1_agree"] = 0.75
    path = tmp_path / f"{method.split(':')[0]}.json"
    plan.save(path)
    return str(path)


def test_a_plan_of_another_method_is_flagged(store, tmp_path):
    _report("report", store, "--method", "wanda", "--plan", _plan(tmp_path, "drop", True), "--out", tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "> **Warning:** the plan's method `drop` is not among the reported method (`wanda:sparsity=0.5`)" in md
    assert "top-1 agreement 0.75 on the store's prompts" in md


def test_a_plan_of_a_reported_method_is_not_flagged_and_unvalidated_says_so(store, tmp_path):
    _report("report", store, "--plan", _plan(tmp_path, "drop", False), "--out", tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Warning" not in md and "## Methods side by side" in md  # both methods, the plan's among them
    assert "Not validated: `prunelens validate PLAN --write`" in md

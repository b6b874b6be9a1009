"""Piped output is never cut: every command's tables print whole cells with COLUMNS unset and stdout not a TTY.

Rich assumes 80 columns when stdout is not a terminal and cuts cells with '…'; the CLI's one console
factory (``prunelens.console.make_console``) widens to the content instead. Each command below runs
under ``CliRunner`` (stdout is a pipe), on names long enough to overflow 80 columns.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rank_helpers import save_tiny, synthetic_store

from prunelens.cli import main
from prunelens.model.loading import load_model

ELLIPSIS = "…"
LONG = "a-directory-name-long-enough-that-any-table-showing-it-overflows-eighty-columns"


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("out") / LONG
    model_dir = save_tiny(root / "tiny-llama", layers=4)
    loaded = load_model(str(model_dir))
    ds = synthetic_store(num_layers=4, seed=5, attrs={"model_id": str(model_dir), "config_hash": loaded.config_hash,
                                                      "readout": "norm", "complete": True})
    store = root / "probe.zarr"
    ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
    return root, model_dir, store


def run(*args: object, stdout_only: bool = False) -> str:
    """Run the CLI; no '…' anywhere; the output (stdout and stderr, or stdout only: the data of --json, '-')."""
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert ELLIPSIS not in res.output, res.output
    return res.stdout if stdout_only else res.output


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def test_models_list_shows_the_whole_path(tmp_path, monkeypatch):
    home = tmp_path / LONG / "home"
    monkeypatch.setenv("PRUNELENS_HOME", str(home))
    out = run("models", "list")
    assert str(home) in out.replace("\n", "") or str(home) in out  # the full path, in one cell


def test_listings_are_whole():
    out = run("plugins")
    assert "register_architectures" in out or "register_methods" in out
    assert widest(run("eval", "--list")) > 80  # task descriptions are long: the table widened, nothing cut
    out = run("rank", "--list-strategies")
    assert "kl_pred" in out


def test_rank_plan_validate_apply_tables_are_whole(setup, tmp_path):
    root, model_dir, store = setup
    out = run("rank", store, "--kind", "block", "-T", "1.0")
    assert all(f"L{i} " in out for i in range(4))
    plan = tmp_path / "plan.json"
    out = run("plan", store, "--kind", "block", "-T", "1.0", "--budget", "1", "--out", plan, "--mergekit",
              tmp_path / "plan.yaml")
    assert f"wrote {plan}" in out
    out = run("validate", plan, "--store", store)
    assert "meas/Σpred" in out and "Taylor(set)" in out  # the headers come through whole
    out = run("apply", plan, "--out", tmp_path / "ckpt")
    assert str(tmp_path / "ckpt") in out


def test_eval_results_table_is_whole(setup):
    _, model_dir, _ = setup
    out = run("eval", model_dir, "--tasks", "mc_letters", "--samples", "2", "--device", "cpu")
    assert "candidate_mass" in out and str(model_dir) in out.replace("\n", "")


def test_probe_summary_is_whole(setup, capsys):
    from prunelens.cli.probe import print_summary

    _, _, store = setup
    print_summary(str(store), {"cells_done": 12, "cells_total": 12, "complete": True,
                               "spearman_kl_pred_vs_kl": json.dumps({})})
    out = capsys.readouterr().out
    assert ELLIPSIS not in out and "ρ(pred,KL)" in out


def test_rank_json_and_csv_to_stdout(setup, tmp_path, monkeypatch):
    import pandas as pd

    _, _, store = setup
    monkeypatch.chdir(tmp_path)
    full = json.loads(run("rank", store, "--kind", "mlp", "-T", "1.0", "--json", stdout_only=True))
    assert [u["rank"] for u in full["units"]] == [1, 2, 3, 4] and full["by"] == "kl_pred"
    kl = [u["kl_pred"] for u in full["units"]]
    assert kl == sorted(kl)
    top = run("rank", store, "--kind", "mlp", "-T", "1.0", "--top", "2", "--csv", "-", stdout_only=True)
    from io import StringIO

    df = pd.read_csv(StringIO(top))
    assert list(df["unit"]) == [u["unit"] for u in full["units"][:2]]  # --csv honours --top
    assert df["kl_pred"].tolist() == pytest.approx(kl[:2], rel=1e-12)
    assert not (tmp_path / "-").exists()  # '-' is stdout, not a file named '-'
    run("rank", store, "--kind", "mlp", "-T", "1.0", "--top", "3", "--csv", "r.csv")
    assert len(pd.read_csv(tmp_path / "r.csv")) == 3


def test_plan_and_validate_json(setup, tmp_path, monkeypatch):
    from prunelens.plan.document import Plan

    _, _, store = setup
    monkeypatch.chdir(tmp_path)
    out = run("plan", store, "--kind", "block", "-T", "1.0", "--budget", "2", "--out", "-", stdout_only=True)
    plan = Plan.from_dict(json.loads(out))  # stdout is the plan JSON and nothing else
    assert len(plan.units) == 2 and not (tmp_path / "-").exists()
    out = run("plan", store, "--kind", "block", "-T", "1.0", "--budget", "2", "--out", "p.json", "--json",
              stdout_only=True)
    assert json.loads(out) == json.loads((tmp_path / "p.json").read_text())
    got = json.loads(run("validate", "p.json", "--store", store, "--json", "--no-write", stdout_only=True))
    assert [r["unit"] for r in got["rows"]] == [u.unit for u in plan.units]
    assert got["rows"][-1]["measured_kl"] >= 0


def test_apply_json(setup, tmp_path):
    _, _, store = setup
    plan = tmp_path / "plan.json"
    run("plan", store, "--kind", "block", "-T", "1.0", "--budget", "1", "--out", plan)
    got = json.loads(run("apply", plan, "--out", tmp_path / "ckpt", "--json", stdout_only=True))
    assert got["checkpoint"] == str(tmp_path / "ckpt") and len(got["units"]) == 1
    assert got["summary"]["layers_after"] == 3 and got["validation"] is None
    text = run("apply", plan, "--out", tmp_path / "ckpt2")
    assert "{'" not in text  # a readable summary line, not a Python dict repr


def test_directory_outputs_refuse_dash(setup, tmp_path, monkeypatch):
    _, model_dir, store = setup
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "plan.json"
    run("plan", store, "--kind", "block", "-T", "1.0", "--budget", "1", "--out", plan)
    for args in (["apply", plan, "--out", "-"], ["report", store, "--out", "-"],
                 ["compress", "--model", model_dir, "--method", "drop", "--units", "L0", "--out", "-"]):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 1 and "'-' (standard output) only works for file outputs" in res.output, res.output
        assert "Traceback" not in res.output
    assert not (tmp_path / "-").exists()

"""``plan``'s outputs (--mergekit alone, one text per stdout), budgets a store cannot fill, piped ``rank``
titles, and ``--quiet`` without library progress bars."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from rank_helpers import save_tiny, synthetic_store

from prunelens.cli import main


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "s.zarr"
    synthetic_store(num_layers=4, seed=2, attrs={"model_id": "tiny", "config_hash": "abc", "complete": True}).to_zarr(
        path, mode="w", consolidated=False, zarr_format=3)
    return path


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], res.output


def test_mergekit_to_stdout_needs_no_plan_file(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _cli("plan", store, "--kind", "block", "-T", "1.0", "--budget", "2", "--mergekit", "-")
    assert res.exit_code == 0, res.output
    slices = yaml.safe_load(res.stdout)["slices"]  # stdout is the YAML and nothing else
    assert sum(b - a for s in slices for a, b in [s["sources"][0]["layer_range"]]) == 2  # 4 layers, 2 dropped
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,needle", [
    (["--out", "-", "--mergekit", "-"], "--out and --mergekit all print to standard output"),
    (["--out", "p.json", "--json", "--llmcompressor", "-"], "--llmcompressor and --json all print"),
    ([], "missing --out"),
])
def test_two_texts_on_stdout_or_none_at_all_is_one_line(store, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _one_line_error(_cli("plan", store, "--kind", "block", "--budget", "2", *args), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind,budget,needle", [
    ("block", "50", "reach at most 4 of the 50 required"),
    ("all", "9", "reach at most 8 of the 9 required"),  # per layer: attention and MLP, or the block
    ("attn", "5", "reach at most 4 of the 5 required"),
])
def test_a_count_budget_the_store_cannot_fill_is_an_error(store, tmp_path, kind, budget, needle):
    res = _cli("plan", store, "--kind", kind, "--budget", budget, "--out", tmp_path / "p.json")
    _one_line_error(res, needle)
    assert not (tmp_path / "p.json").exists()


def test_a_count_budget_the_ranking_cannot_fill_names_what_it_reaches(store, tmp_path):
    """8 units fit together, but safest first this ranking takes a block that excludes its sublayers."""
    from prunelens.plan.ranking import load_store, rank_units
    from prunelens.plan.unit_selection import safest_units

    df = rank_units(load_store(store), method="drop", kind=None, temperature=1.0, by="kl_pred")
    reached = len(safest_units(list(df["unit"]), 8))
    assert reached < 8  # the independent count this store's ranking gives
    res = _cli("plan", store, "-T", "1.0", "--budget", "8", "--out", tmp_path / "p.json")
    _one_line_error(res, f"this ranking reaches {reached}: ask for at most {reached}")


def test_a_count_budget_that_fits_exactly_is_planned(store, tmp_path):
    res = _cli("plan", store, "--kind", "attn", "--budget", "4", "--out", tmp_path / "p.json")
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "p.json").read_text())["units"]) == 4


def test_piped_rank_title_is_one_line_and_no_line_has_trailing_spaces(store):
    res = _cli("rank", store, "-T", "1.0")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("drop · all · T=1 · by kl_pred") and lines[0].endswith("KL = KL(p_dense‖q))")
    assert lines[1].startswith("┏")
    assert all(line == line.rstrip() for line in lines), [line for line in lines if line != line.rstrip()]


def test_quiet_probe_prints_no_loading_bars(tmp_path, monkeypatch):
    from transformers.utils import logging as hf_logging

    model = save_tiny(tmp_path / "tiny", layers=2)
    (tmp_path / "prompts.txt").write_text("w5 w6 w7 w8\nw9 w10 w11 w12\n")
    monkeypatch.setenv("PRUNELENS_NO_PROGRESS", "1")
    try:
        res = CliRunner().invoke(main, [
            "probe", "--model", str(model), "--method", "drop", "--units", "L0", "--samples", "2", "--steps", "2",
            "--prompt-len", "4", "--temperature", "1", "--locality", "propagated", "--timing", "teacher_forced",
            "--device", "cpu", "--no-compile", "--quiet", "--prompts", str(tmp_path / "prompts.txt"),
            "--out", str(tmp_path / "p.zarr")])
        assert res.exit_code == 0, res.output
        assert "Loading weights" not in res.output and res.output.strip() == ""
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()

"""Files travel: a copied plan finds its store from any working directory; outputs follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from click.testing import CliRunner
from rank_helpers import save_tiny, synthetic_store

from prunelens.cli import main
from prunelens.model.loading import load_model


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    model_dir = save_tiny(root / "model", layers=4)
    loaded = load_model(str(model_dir))
    ds = synthetic_store(num_layers=4, seed=2, attrs={"model_id": str(model_dir), "config_hash": loaded.config_hash,
                                                      "readout": "norm", "complete": True})
    work = root / "a"
    work.mkdir()
    ds.to_zarr(work / "probe.zarr", mode="w", consolidated=False, zarr_format=3)
    return root, model_dir, work, loaded


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_copied_plan_validates_from_another_directory(made, monkeypatch):
    root, _, work, _ = made
    monkeypatch.chdir(work)
    res = _cli("plan", "probe.zarr", "--kind", "block", "-T", "1.0", "--budget", "1", "--out", "plan.json")
    assert res.exit_code == 0, res.output
    assert os.path.isabs(json.loads((work / "plan.json").read_text())["store_path"])
    # copy plan and store elsewhere, remove the originals, validate from a third directory
    moved = root / "b"
    moved.mkdir()
    shutil.copy(work / "plan.json", moved / "plan.json")
    shutil.copytree(work / "probe.zarr", moved / "probe.zarr")
    shutil.rmtree(work / "probe.zarr")
    elsewhere = root / "c"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = _cli("validate", moved / "plan.json", "--no-write")
    assert res.exit_code == 0, res.output
    assert "measured KL" in res.output
    # restore the fixture's store for the other tests
    shutil.copytree(moved / "probe.zarr", work / "probe.zarr")


def test_relative_store_path_resolves_beside_the_plan(made, tmp_path, monkeypatch):
    from prunelens.plan.document import Plan

    _, _, work, _ = made
    plan_dir = tmp_path / "shared"
    plan_dir.mkdir()
    monkeypatch.chdir(work)
    res = _cli("plan", "probe.zarr", "--kind", "block", "-T", "1.0", "--budget", "1", "--out", plan_dir / "p.json")
    assert res.exit_code == 0, res.output
    d = json.loads((plan_dir / "p.json").read_text())
    d["store_path"] = "probe.zarr"  # written relative to the plan file (a plan shipped with its store)
    shutil.copytree(work / "probe.zarr", plan_dir / "probe.zarr")
    (plan_dir / "p.json").write_text(json.dumps(d))
    monkeypatch.chdir(tmp_path)
    assert Plan.load(plan_dir / "p.json").store_path == str((plan_dir / "probe.zarr").resolve())
    # an older plan whose store_path is relative to the directory it was made in still works from there
    d["store_path"] = "a/probe.zarr"
    (plan_dir / "p.json").write_text(json.dumps(d))
    monkeypatch.chdir(work.parent)
    assert Plan.load(plan_dir / "p.json").store_path == str((work / "probe.zarr").resolve())


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(made, tmp_path, mask):
    from prunelens.plan.apply import apply_plan
    from prunelens.plan.document import Plan

    _, _, work, _ = made
    old = os.umask(mask)
    try:
        res = _cli("plan", work / "probe.zarr", "--kind", "block", "-T", "1.0", "--budget", "1",
                   "--out", tmp_path / "plan.json", "--mergekit", tmp_path / "plan.yaml")
        assert res.exit_code == 0, res.output
        out, _ = apply_plan(Plan.load(tmp_path / "plan.json"), tmp_path / "ckpt", progress=False)
        res = _cli("rank", work / "probe.zarr", "-T", "1.0", "--csv", tmp_path / "rank.csv")
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    fmode, dmode = 0o666 & ~mask, 0o777 & ~mask
    for f in ("plan.json", "plan.yaml", "rank.csv"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == fmode, f
    assert stat.S_IMODE(out.stat().st_mode) == dmode
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == fmode, f.name  # model.safetensors included

"""bench/evopress_compare.py's own arithmetic: EvoPress's level rule, the Wanda level database, the bootstrap ratio."""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from prunelens.compression.sparsity_masks import topk_mask
from prunelens.model.adapters import get_adapter
from prunelens.model.loading import LoadedModel

BENCH = Path(__file__).resolve().parents[1] / "bench" / "evopress_compare.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("evopress_compare_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evo_levels_follow_evopress_rule(bench):
    # SmolLM2's k_proj (192 x 576 = 110,592 weights) at 70 % with 11,059 weights a step: the step is 0.099998 of
    # the layer, so EvoPress's min level is int(0.7 // 0.099998) = 7 and its max int(0.3 // 0.099998) = 3
    levels = bench.evo_levels(110592, 0.7, 11059, 8)
    assert sorted(levels) == list(range(-7, 4))
    for k, s in levels.items():
        assert s * 110592 == pytest.approx(0.7 * 110592 + k * 11059, abs=1e-6)
    # a layer with more weights than 8 steps either way: capped at num_levels
    big = bench.evo_levels(884736, 0.7, 11059, 8)
    assert sorted(big) == list(range(-8, 9))
    assert big[-8] == pytest.approx(0.6, abs=1e-5) and big[8] == pytest.approx(0.8, abs=1e-5)


def test_ratio_ci_against_direct_computation(bench):
    rng = np.random.default_rng(3)
    a = {"x": list(rng.normal(3.0, 0.2, 8)), "y": list(rng.normal(2.0, 0.1, 6))}
    assert bench.ratio_ci(a, a) == (1.0, 1.0, 1.0)
    shifted = {k: [v - 0.25 for v in vals] for k, vals in a.items()}  # every window 0.25 nats worse in a
    point, lo, hi = bench.ratio_ci(a, shifted)
    assert point == pytest.approx(math.exp(0.25), rel=1e-12)
    assert lo == pytest.approx(math.exp(0.25), rel=1e-9) and hi == pytest.approx(math.exp(0.25), rel=1e-9)
    b = {"x": list(rng.normal(2.9, 0.2, 8)), "y": list(rng.normal(2.0, 0.1, 6))}
    point, lo, hi = bench.ratio_ci(a, b)
    direct = math.exp((np.mean(np.subtract(a["x"], b["x"])) + np.mean(np.subtract(a["y"], b["y"]))) / 2)
    assert point == pytest.approx(direct, rel=1e-12)
    assert lo < point < hi


def test_wanda_db_levels_and_scores(bench, tmp_path, monkeypatch):
    """Every linear gets EvoPress's levels; each level file is Wanda's per-row top-k mask of |W|·sqrt(S)."""
    model = make_tiny_model("llama", layers=2, hidden=32)
    loaded = LoadedModel(model, None, get_adapter(model), "tiny", "0")
    monkeypatch.setattr("prunelens.model.loading.load_model", lambda *a, **k: loaded)
    calib = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    args = argparse.Namespace(sparsity=0.5, evo_weights_diff=64, evo_levels=2)
    info = bench.build_wanda_db(tmp_path, args, {"calib": calib.tolist()})
    db = tmp_path / "evo-db"
    names = sorted(p.name for p in db.iterdir() if p.is_dir())
    assert len(names) == 2 * 7 and info["db_files"] == sum(len(list((db / n).glob("*.pth"))) for n in names)
    # independent input norms: mean over sequences of the squared inputs of q_proj (the first layer's attention
    # input after its norm), captured by a hook
    seen: list[torch.Tensor] = []
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    h = q.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(input_ids=calib)
    h.remove()
    x = seen[0].reshape(-1, 32)
    norms = (x * x).sum(0) / calib.shape[0]
    w = q.weight.data
    for level, s in bench.evo_levels(w.numel(), 0.5, 64, 2).items():
        saved = torch.load(db / "model.layers.0.self_attn.q_proj" / f"{level}.pth", weights_only=True)
        k = int(w.shape[1] * s)
        keep = topk_mask(w.abs() * norms.sqrt(), s, dim=1)  # Wanda's mask, through torch.topk
        assert torch.equal(saved, w * keep), level
        assert int((saved == 0).sum()) == w.shape[0] * k

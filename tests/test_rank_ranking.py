"""Ranking: store strategies vs a direct numpy sort; dense strategies vs hand-written numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rank_helpers import random_ids, synthetic_store

from prunelens.errors import PrunelensError
from prunelens.model.adapters import get_adapter
from prunelens.model.loading import LoadedModel
from prunelens.plan.ranking import COLUMNS, rank_units, ranker_registry


def test_registry_lists_builtin_strategies():
    reg = ranker_registry()
    assert {"kl_pred", "kl", "block_influence", "angular", "llm_drop"} <= set(reg)
    assert reg["kl_pred"][1].needs == "store" and reg["angular"][1].needs == "dense"


@pytest.mark.parametrize("by", ["kl_pred", "kl"])
@pytest.mark.parametrize("kind", ["attn", "mlp", "block", None])
def test_store_ranking_equals_numpy_sort(by, kind):
    ds = synthetic_store(num_layers=5, seed=3)
    df = rank_units(ds, method="drop", kind=kind, temperature=0.7, by=by, locality="local", timing="free_running")
    assert list(df.columns) == list(COLUMNS)
    names = [str(u) for u, k in zip(ds["unit"].values, ds["kind"].values) if kind is None or k == kind]
    arr = ds[by].sel({"method": "drop", "locality": "local", "timing": "free_running", "temperature": 0.7}).sel(unit=names).values
    mean = arr.astype(np.float64).reshape(len(names), -1).mean(axis=1)
    expected = [names[i] for i in np.argsort(mean, kind="stable")]
    assert list(df["unit"]) == expected
    np.testing.assert_allclose(df["score"].to_numpy(), np.sort(mean), rtol=1e-6)
    assert list(df["rank"]) == list(range(1, len(names) + 1))
    # the other columns are the averaged store variables of the same unit
    cos = ds["cos_dev"].sel({"method": "drop", "locality": "local", "timing": "free_running", "temperature": 0.7, "space": "logit"})
    first = df["unit"].iloc[0]
    assert df["cos_dev_logit"].iloc[0] == pytest.approx(float(cos.sel(unit=first).values.astype(np.float64).mean()), rel=1e-6)


def test_unprobed_units_come_last_and_a_nan_step_is_never_skipped():
    """a probed unit NaN on one step must not rank as safe (its NaN steps were skipped)."""
    from prunelens.plan.ranking import nonfinite_note, nonfinite_units

    ds = synthetic_store(num_layers=4, kinds=("attn",))
    ds["kl_pred"].values[0, 1] = np.nan  # L1.attn not probed
    ds["done"].values[0, 1] = False
    ds["kl_pred"].values[0, 2, ..., 0, 0] = 0.0  # L2.attn would be the safest ...
    ds["kl_pred"].values[0, 2, ..., 0, 1] = np.nan  # ... but its output was NaN on one step
    df = rank_units(ds, method="drop", kind="attn", temperature=1.0)
    assert set(df["unit"].iloc[:2]) == {"L0.attn", "L3.attn"} and list(df["rank"].iloc[:2]) == [1, 2]
    assert set(df["unit"].iloc[-2:]) == {"L1.attn", "L2.attn"} and df["rank"].iloc[-2:].isna().all()
    assert np.isnan(df.set_index("unit").loc["L2.attn", "kl_pred"])
    assert nonfinite_units(df) == ["L2.attn"]  # L1.attn is unprobed, not non-finite
    assert "L2.attn" in nonfinite_note(ds, df)
    # a probed unit: its mean is the plain mean of every sample and step
    row = df.set_index("unit").loc["L3.attn"]
    vals = ds["kl_pred"].sel({"method": "drop", "unit": "L3.attn", "locality": "propagated", "timing": "teacher_forced",
                             "temperature": 1.0}).values.astype(np.float64)
    assert row["kl_pred"] == pytest.approx(vals.mean(), rel=1e-6)


def pd_isna(v):
    import pandas as pd

    return pd.isna(v)


def test_clear_errors_for_bad_choices():
    ds = synthetic_store()
    with pytest.raises(PrunelensError, match="temperature 0.5 is not in the store"):
        rank_units(ds, method="drop", kind="attn", temperature=0.5)
    with pytest.raises(PrunelensError, match="method 'wanda' is not in the store"):
        rank_units(ds, method="wanda", kind="attn", temperature=0.7)
    with pytest.raises(PrunelensError, match="unknown ranking strategy"):
        rank_units(ds, method="drop", kind="attn", temperature=0.7, by="nope")
    with pytest.raises(PrunelensError, match="unknown unit kind"):
        rank_units(ds, method="drop", kind="head", temperature=0.7)


# -- dense strategies against numpy on independently captured hidden states ---------------------
def _loaded(model):
    return LoadedModel(model, None, get_adapter(model), "tiny", "h")


def _hook_streams(model, ids):
    """x_in/x_out of every block, attention and MLP from forward hooks (llama: mid = x + attn_out)."""
    layers = model.model.layers
    rec: dict = {}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, kw, i=i: rec.__setitem__(("x", i), (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("a", i), o[0].clone())))
        hooks.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("m", i), o.clone())))
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("y", i), (o[0] if isinstance(o, tuple) else o).clone())))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    for h in hooks:
        h.remove()
    streams = {}
    for i in range(len(layers)):
        x, y = rec[("x", i)].double().numpy(), rec[("y", i)].double().numpy()
        if i + 1 < len(layers):  # the model's own hidden_states agree with the hooks
            np.testing.assert_allclose(out.hidden_states[i + 1].double().numpy(), y, atol=1e-6)
        mid = x + rec[("a", i)].double().numpy()
        np.testing.assert_allclose(mid + rec[("m", i)].double().numpy(), y, atol=1e-5)
        streams[f"L{i}"], streams[f"L{i}.attn"], streams[f"L{i}.mlp"] = (x, y), (x, mid), (mid, y)
    return streams


def _np_cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("kind", ["block", "attn", "mlp"])
def test_dense_rankers_match_numpy_formulas(tiny_llama, kind):
    ids = random_ids(batch=3, length=10)
    streams = _hook_streams(tiny_llama, ids)
    loaded = _loaded(tiny_llama)
    results = {by: rank_units(None, method="drop", kind=kind, temperature=1.0, by=by, loaded=loaded, calib_ids=ids)
               .set_index("unit")["score"] for by in ("block_influence", "angular", "llm_drop")}
    for name, (x, y) in streams.items():
        if (kind == "block") != ("." not in name) or (kind != "block" and not name.endswith(kind)):
            continue
        cos = _np_cos(x, y)  # [batch, seq]
        bi = float(np.mean(1.0 - cos.mean(axis=1)))
        ang = float(np.mean(np.arccos(np.clip(cos[:, -1], -1, 1)) / np.pi))
        assert results["block_influence"][name] == pytest.approx(bi, rel=1e-4, abs=1e-7)
        assert results["angular"][name] == pytest.approx(ang, rel=1e-4, abs=1e-7)
        assert results["llm_drop"][name] == pytest.approx(1.0 - cos.mean(), rel=1e-4, abs=1e-7)
    order = results["angular"].sort_values(kind="stable").index.tolist()
    assert order == results["angular"].index.tolist()  # rank_units returns them sorted


def test_angular_span_matches_numpy(tiny_llama):
    from prunelens_plugins.rankers import angular_span

    ids = random_ids(batch=2, length=8, seed=1)
    streams = _hook_streams(tiny_llama, ids)
    states = [streams[f"L{i}"][0] for i in range(3)] + [streams["L2"][1]]
    d = angular_span(get_adapter(tiny_llama), ids, 2)
    for ell in range(2):
        c = _np_cos(states[ell][:, -1], states[ell + 2][:, -1])
        assert d[ell] == pytest.approx(float(np.mean(np.arccos(c) / np.pi)), rel=1e-4)


def test_infinite_measurements_rank_last_but_ranked():
    ds = synthetic_store(num_layers=4, kinds=("mlp",))
    ds["kl"].values[0, 0, 1, 0, 0, 0, 0] = np.inf  # L0.mlp overflowed once (propagated, teacher-forced, T=0.7)
    ds["kl"].values[0, 3] = np.nan  # L3.mlp not probed
    df = rank_units(ds, method="drop", kind="mlp", temperature=0.7, by="kl")
    assert list(df["unit"])[-2:] == ["L0.mlp", "L3.mlp"]
    assert df["rank"].iloc[-2] == 3 and pd_isna(df["rank"].iloc[-1])
    assert np.isinf(df.set_index("unit").loc["L0.mlp", "kl"])

"""The store's vocabulary and its one reader (StoreView) against independent computations."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from rank_helpers import synthetic_store
from scipy.stats import rankdata, spearmanr

from prunelens.errors import PrunelensError
from prunelens_store import StoreView, open_store, select_temperature, spearman
from prunelens_store.schema import (
    DEFAULT_LOCALITIES,
    LOCALITIES,
    METRICS,
    SCHEMA,
    SPACES,
    TIMINGS,
    VARIABLE_ATTRS,
    VARIABLES,
    cell_shape,
    template,
)
from prunelens_store.stats import average_ranks, cell_means


# -- vocabulary ---------------------------------------------------------------------
def test_one_table_gives_every_view_of_the_variables():
    assert set(VARIABLES) == set(VARIABLE_ATTRS) == set(SCHEMA)
    assert METRICS == tuple(n for n, v in SCHEMA.items() if v.dims[:4] == ("method", "unit", "locality", "timing")
                            and v.dtype == "float32")
    assert "done" not in METRICS and "free_tokens" not in METRICS
    ds = template(["drop"], ["L0", "L0.attn"], [0, 0], ["block", "attn"], 2, 3, [0.5, 1.0])
    sizes = dict(ds.sizes)
    for name in METRICS:
        assert ds[name].shape[2:] == cell_shape(name, sizes), name
    assert list(ds["space"].values) == list(SPACES)
    assert list(ds["locality"].values) == list(DEFAULT_LOCALITIES) and set(DEFAULT_LOCALITIES) <= set(LOCALITIES)


def test_probe_engine_and_metrics_use_the_store_vocabulary():
    from prunelens.probe.engine import ProbeSettings
    from prunelens.probe.metrics import RowMetrics

    assert {f.name for f in dataclasses.fields(RowMetrics)} == set(METRICS)
    assert ProbeSettings().localities == DEFAULT_LOCALITIES and ProbeSettings().timings == TIMINGS
    ProbeSettings(localities=LOCALITIES)  # every schema locality is accepted
    with pytest.raises(PrunelensError, match="locality must be"):
        ProbeSettings(localities=("nowhere",))


def test_tui_metrics_follow_the_schema():
    from prunelens_tui.selection import METRICS as TUI_METRICS

    assert TUI_METRICS[:3] == ("kl_pred", "kl", "cos_dev") and set(TUI_METRICS) == set(METRICS)


# -- temperature policy ----------------------------------------------------------------
def test_temperature_default_is_one_or_the_nearest():
    assert select_temperature([0.5, 1.0, 2.0]) == 1.0
    assert select_temperature([0.5, 0.9, 2.0]) == 0.9
    assert select_temperature([0.5, 1.5]) == 0.5  # a tie goes to the first label
    assert select_temperature([2.0]) == 2.0


def test_temperature_explicit_is_exact_or_a_clear_error():
    assert select_temperature([0.7, 1.0], 0.7 + 1e-9, exact=True) == 0.7
    with pytest.raises(PrunelensError, match="temperature 0.8 is not in the store; it has 0.7, 1"):
        select_temperature([0.7, 1.0], 0.8, exact=True)


def test_temperature_browsing_takes_the_nearest():
    assert select_temperature([0.7, 1.0], 0.8) == 0.7
    assert select_temperature([0.7, 1.0], 5.0) == 1.0
    view = StoreView.of(synthetic_store(num_layers=1))
    assert view.temperatures == [0.7, 1.0] and view.temperature() == 1.0 and view.temperature(0.1) == 0.7


# -- unit means ---------------------------------------------------------------------
def _planted():
    ds = synthetic_store(num_layers=2, methods=("drop", "wanda"), seed=4)
    ds["done"].values[1, 2] = False  # wanda on L0.mlp not probed yet
    ds["kl"].values[1, 2] = np.nan
    ds["kl"].values[0, 1, 1, 0, 1, 2, 3] = np.nan  # drop on L0.attn: one NaN step (propagated, teacher-forced, T=1)
    ds["kl"].values[0, 4, 1, 0, 1, 0, 0] = np.inf  # drop on L1.attn overflowed once
    return ds


def _by_hand(ds, var, m, t_index, loc=1, tim=0, space=None):
    a = np.asarray(ds[var].values, dtype=np.float64)[m, :, loc, tim]
    if space is not None:
        a = a[:, space]
    a = a[:, t_index] if "temperature" in ds[var].dims else a
    out = np.array([row.mean() for row in a])  # NaN and inf propagate
    return np.where(np.asarray(ds["done"].values[m]), out, np.nan)


@pytest.mark.parametrize("lazy", [False, True])
def test_unit_means_match_a_hand_mean_with_done_mask_nan_and_inf(tmp_path, lazy):
    ds = _planted()
    if lazy:
        path = tmp_path / "s.zarr"
        ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
        ds = open_store(path, allow_incomplete=True)
    view = StoreView.of(ds)
    units = [str(u) for u in ds["unit"].values]
    cell = {"temperature": 1.0, "locality": "propagated", "timing": "teacher_forced", "units": units}
    for m, method in enumerate(("drop", "wanda")):
        got = view.unit_means("kl", method=method, **cell)
        np.testing.assert_allclose(got, _by_hand(ds, "kl", m, 1), rtol=1e-12)
        for s, space in enumerate(SPACES):
            np.testing.assert_allclose(view.unit_means("cos_dev", method=method, space=space, **cell),
                                       _by_hand(ds, "cos_dev", m, 1, space=s), rtol=1e-12)
        all_spaces = view.unit_means("cos_dev", method=method, **cell)
        assert all_spaces.shape == (len(units), len(SPACES))
        np.testing.assert_allclose(view.unit_means("top1_agree", method=method, **cell),
                                   _by_hand(ds, "top1_agree", m, None), rtol=1e-12)
    drop = view.unit_means("kl", method="drop", **cell)
    assert np.isnan(drop[1]) and np.isposinf(drop[4]) and np.isfinite(drop[[0, 2, 3, 5]]).all()
    assert np.isnan(view.unit_means("kl", method="wanda", **cell)[2])
    assert view.unit_means("kl", method="drop", **{**cell, "units": ["L1", "L0"]}).tolist() == \
        drop[[3, 0]].tolist()


def test_cell_means_by_hand():
    a = np.array([[[1.0, 2.0], [3.0, 4.0]], [[1.0, np.nan], [0.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]])
    got = cell_means(a, np.array([True, True, False]))
    assert got[0] == 2.5 and np.isnan(got[1]) and np.isnan(got[2])


def test_unit_means_name_a_missing_label():
    view = StoreView.of(synthetic_store(num_layers=1))
    with pytest.raises(PrunelensError, match="locality 'nowhere' is not in the store; it has local, propagated"):
        view.unit_means("kl", method="drop", temperature=1.0, locality="nowhere", timing="teacher_forced",
                        units=["L0"])
    with pytest.raises(PrunelensError, match="temperature 0.5 is not in the store"):
        view.unit_means("kl", method="drop", temperature=0.5, locality="local", timing="teacher_forced",
                        units=["L0"])


def test_a_complete_store_reads_each_unit_once(tmp_path):
    ds = synthetic_store(num_layers=2, attrs={"model_id": "m", "config_hash": "h", "complete": True})
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    opened = open_store(path, verify=False)
    view = StoreView.of(opened)
    assert StoreView.of(opened) is view and view.static
    units = [str(u) for u in ds["unit"].values]
    cell = {"method": "drop", "temperature": 0.7, "locality": "local", "timing": "teacher_forced", "units": units}
    first = view.unit_means("kl", **cell)
    shutil.rmtree(path / "kl")  # a second read of kl would now fail
    np.testing.assert_array_equal(view.unit_means("kl", **cell), first)
    other = view.unit_means("kl", **{**cell, "temperature": 1.0, "locality": "propagated"})  # another slice: cached too
    np.testing.assert_allclose(other, _by_hand(ds, "kl", 0, 1), rtol=1e-12)


def test_a_half_written_store_forgets_means_when_a_cell_finishes(tmp_path):
    ds = synthetic_store(num_layers=1, attrs={"model_id": "m", "config_hash": "h", "complete": False})
    full = ds["kl"].values.copy()
    ds["done"].values[0, 2] = False
    ds["kl"].values[0, 2] = np.nan
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    opened = open_store(path, allow_incomplete=True, verify=False)
    view = StoreView.of(opened)
    cell = {"method": "drop", "temperature": 1.0, "locality": "local", "timing": "teacher_forced",
            "units": ["L0", "L0.attn", "L0.mlp"]}
    assert np.isnan(view.unit_means("kl", **cell)[2]) and not view.static
    import zarr

    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group["kl"][0, 2] = full[0, 2]
    group["done"][0, 2] = True
    assert view.unit_means("kl", **cell)[2] == pytest.approx(full[0, 2, 0, 0, 1].astype(np.float64).mean(), rel=1e-12)


def test_an_in_memory_dataset_is_never_stale():
    ds = synthetic_store(num_layers=1)
    view = StoreView.of(ds)
    cell = {"method": "drop", "temperature": 1.0, "locality": "local", "timing": "teacher_forced", "units": ["L0"]}
    view.unit_means("kl", **cell)
    ds["kl"].values[0, 0] = 2.0
    assert view.unit_means("kl", **cell)[0] == 2.0


# -- done mask and prompts ------------------------------------------------------------
def test_done_mask_and_prompts(tmp_path):
    ds = synthetic_store(num_layers=1, methods=("drop", "wanda"))
    ds["done"].values[1, 1] = False
    ds["tokens"].values[0, :2] = -1  # sample 0: a 4-token prompt, left-padded
    ds["prompt_len"].values[0] = 4
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    view = StoreView.of(open_store(path, allow_incomplete=True, verify=False), path)
    np.testing.assert_array_equal(view.done, ds["done"].values)
    assert view.done_for("wanda", ["L0.attn", "L0"]).tolist() == [False, True]
    p = view.prompts()
    assert p.steps == 5 and len(p.rows[0]) == 9 and len(p.rows[1]) == 11
    assert p.prompt_ids()[0] == ds["tokens"].values[0, 2:6].tolist()
    assert p.prompt_ids()[1] == ds["tokens"].values[1, :6].tolist() and p.candidates is None
    with pytest.raises(PrunelensError, match="no 'tokens' variable"):
        StoreView(ds.drop_vars("tokens")).prompts()


# -- Spearman ---------------------------------------------------------------------------
def test_average_ranks_match_scipy():
    a = np.array([3.0, 1.0, 2.0, 3.0, 1.0, 5.0, 3.0])
    np.testing.assert_array_equal(average_ranks(a), rankdata(a))


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties_and_missing_pairs(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)  # many ties
    y = x + rng.integers(0, 4, 40)
    x[:3] = np.nan
    y[5] = np.inf
    ok = np.isfinite(x) & np.isfinite(y)
    assert spearman(x, y) == pytest.approx(spearmanr(x[ok], y[ok]).statistic, abs=1e-12)


def test_spearman_degenerate_cases_are_nan():
    assert np.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert np.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    assert spearman([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1.0)

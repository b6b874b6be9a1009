"""The TUI's data layer and drawing helpers against independent computations (no app)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunelens_tui import views
from prunelens_tui.discover import find_stores, summarize
from prunelens_tui.selection import Selection, choices, cycle, default_selection
from prunelens_tui.synthetic import make_store, synthetic_dataset, write_store
from prunelens_tui.widgets.braille import Canvas, Series, render_plot
from prunelens_tui.widgets.heatmap import _tick_line
from prunelens_tui.widgets.scale import GLYPHS, Scale, fmt

KW = dict(methods=("drop", "magnitude:sparsity=0.5"), num_layers=4, samples=3, steps=8, temperatures=(0.7, 1.0))


@pytest.fixture(scope="module")
def mem():
    return synthetic_dataset(**KW)


@pytest.fixture(scope="module")
def store(tmp_path_factory, mem):
    from prunelens_tui.backend import open_store

    path = write_store(mem, tmp_path_factory.mktemp("views") / "run.zarr")
    return open_store(path)


def test_heatmap_is_the_sample_mean_of_the_raw_array(store, mem):
    sel = Selection(method="magnitude:sparsity=0.5", metric="cos_dev", space="logit", temperature=0.7,
                    locality="local", timing="free_running", kind="attn")
    hm = views.heatmap(store, sel)
    raw = mem["cos_dev"].values  # [method, unit, locality, timing, space, T, sample, step]
    units = [i for i, k in enumerate(mem["kind"].values) if k == "attn"]
    expected = raw[1][units][:, 0, 1, 1, 0].mean(axis=1)  # local, free_running, logit, T=0.7 -> [unit, step]
    assert hm.units == ["L0.attn", "L1.attn", "L2.attn", "L3.attn"]
    assert hm.values.shape == (4, 8)
    np.testing.assert_allclose(hm.values, expected, rtol=1e-6)


def test_heatmap_of_a_metric_without_space_or_temperature(store, mem):
    sel = Selection(method="drop", metric="top1_agree", locality="propagated", timing="teacher_forced")
    hm = views.heatmap(store, sel)
    np.testing.assert_allclose(hm.values, mem["top1_agree"].values[0, :, 1, 0].mean(axis=1), rtol=1e-6)
    assert "T=" not in hm.title


def test_not_done_cells_are_nan_not_errors(tmp_path):
    ds = synthetic_dataset(**{**KW, "methods": ("drop",)}, done_fraction=0.5)
    from prunelens_tui.backend import open_store

    opened = open_store(write_store(ds, tmp_path / "half.zarr"))
    hm = views.heatmap(opened, default_selection(opened))
    assert np.isfinite(hm.values[:6]).all() and np.isnan(hm.values[6:]).all()
    s = summarize(tmp_path / "half.zarr")
    assert (s.done, s.cells, s.status) == (6, 12, "resumable 6/12")


def test_layer_curves_and_theory_match_direct_means(store, mem):
    sel = Selection(method="drop", temperature=1.0, locality="propagated", timing="teacher_forced", kind="mlp")
    curves = views.layer_curves(store, sel)
    mlp = [i for i, k in enumerate(mem["kind"].values) if k == "mlp"]
    np.testing.assert_array_equal(curves.layers, [0, 1, 2, 3])
    for s, space in enumerate(("embedding", "logit", "probability")):
        meas, pred = curves.series[f"1-cos {space}"]
        np.testing.assert_allclose(meas, mem["cos_dev"].values[0][mlp][:, 1, 0, s, 1].mean(axis=(1, 2)), rtol=1e-6)
        np.testing.assert_allclose(pred, mem["cos_dev_pred"].values[0][mlp][:, 1, 0, s, 1].mean(axis=(1, 2)),
                                   rtol=1e-6)
    np.testing.assert_allclose(curves.series["KL"][1], mem["kl_pred"].values[0][mlp][:, 1, 0, 1].mean(axis=(1, 2)),
                               rtol=1e-6)
    th = views.theory(store, sel)
    np.testing.assert_allclose(th.kl, curves.series["KL"][0], rtol=1e-12)
    np.testing.assert_allclose(th.cos_pred, curves.series["1-cos probability"][1], rtol=1e-12)


def _spearman_by_hand(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))  # no ties in continuous data
    return float(np.corrcoef(rx, ry)[0, 1])


def test_spearman_matches_a_hand_computation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=0.8, size=40)
    rho, n = views.spearman(x, y)
    assert n == 40 and rho == pytest.approx(_spearman_by_hand(x, y), abs=1e-12)
    y[:5] = np.nan
    rho, n = views.spearman(x, y)
    assert n == 35 and rho == pytest.approx(_spearman_by_hand(x[5:], y[5:]), abs=1e-12)
    assert np.isnan(views.spearman([1.0, 2.0], [2.0, 1.0])[0])


def test_selection_defaults_and_cycling(store):
    sel = default_selection(store)
    assert (sel.method, sel.metric, sel.space, sel.temperature, sel.locality, sel.timing) == \
        ("drop", "kl_pred", "probability", 1.0, "propagated", "teacher_forced")
    assert choices(store, "kind") == ["all", "block", "attn", "mlp"]
    assert cycle(sel, store, "temperature").temperature == 0.7
    assert cycle(cycle(sel, store, "temperature"), store, "temperature").temperature == 1.0
    assert cycle(sel, store, "space").space == "embedding"
    assert cycle(sel, store, "metric").metric == "kl"


def test_scale_levels_linear_and_log():
    lin = Scale.fit(np.array([0.0, 1.0, np.nan]))
    assert not lin.log and lin.level(0.0) == 0 and lin.level(1.0) == 7 and lin.level(0.5) == 4
    assert lin.level(float("nan")) is None
    log = Scale.fit(np.array([1e-4, 1e-2, 1.0]))
    assert log.log and log.level(1e-4) == 0 and log.level(1.0) == 7 and log.level(1e-2) == 4
    assert log.glyph(1.0)[0] == GLYPHS[-1]
    assert fmt(0.000123) == "1.23e-04" and fmt(0.5) == "0.5" and fmt(float("inf")) == "n/a"


def test_braille_canvas_bits():
    c = Canvas(2, 1)
    c.dot(0, 0, "red")
    c.dot(3, 3, "blue")
    rows = c.rows()[0]
    assert rows.plain == chr(0x2801) + chr(0x2880)
    c = Canvas(1, 1)
    c.line(0, 0, 1, 3, "x")  # a diagonal through the cell lights one dot per row
    assert bin(int(c.bits[0, 0])).count("1") == 4


def test_render_plot_fills_the_box_and_labels_axes():
    text = render_plot([Series("a", np.arange(5), np.arange(5) ** 2, lines=True)], 30, 8)
    lines = text.plain.split("\n")
    assert len(lines) == 8 and all(len(line) <= 30 for line in lines)
    assert lines[0].strip().startswith("16") and lines[-2].strip().startswith("0")
    assert lines[-1].split() == ["0", "4"]


def test_tick_line_places_labels_over_their_step():
    assert _tick_line(list(range(12)), 1) == "0    5    10"
    assert _tick_line(list(range(4)), 4) == "0       2       "


def test_find_and_summarize_stores(tmp_path):
    make_store(tmp_path / "a" / "one.zarr", **KW)
    make_store(tmp_path / "b" / "deeper" / "two.zarr", **{**KW, "done_fraction": 0.25})
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "hello.txt").write_text("hi")
    found = find_stores([tmp_path])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in found) == ["a/one.zarr", "b/deeper/two.zarr", "bad.zarr"]
    by_name = {p.name: summarize(p) for p in found}
    one = by_name["one.zarr"]
    assert (one.status, one.model, one.units, one.samples, one.steps) == ("complete", "tiny-llama-synthetic", 12, 3, 8)
    assert one.methods == ["drop", "magnitude:sparsity=0.5"] and one.temperatures == [0.7, 1.0]
    assert by_name["two.zarr"].status == "resumable 6/24"
    assert by_name["bad.zarr"].error and by_name["bad.zarr"].status == "error"
    missing = summarize(tmp_path / "nope.zarr")
    assert "no such" in missing.error


def test_half_created_store_is_an_error(tmp_path):
    import shutil

    path = make_store(tmp_path / "cut.zarr", **KW)
    shutil.rmtree(path / "kl_pred")  # as if the writer died while creating the arrays
    s = summarize(path)
    assert s.status == "error" and "kl_pred" in s.error


def test_newer_schema_is_an_error(tmp_path):
    path = make_store(tmp_path / "new.zarr", **KW)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    s = summarize(path)
    assert s.status == "error" and "99" in s.error

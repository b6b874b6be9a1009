"""The probe store: atomic creation, cell writes, resume checks, finalise, and the reader's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from prunelens.errors import PrunelensError
from prunelens_store import open_store
from prunelens_store.schema import METRICS, SCHEMA_VERSION, VARIABLES
from prunelens_store.writer import StoreWriter, build_template, create_store, spearman_table

METHODS, UNITS = ["drop", "magnitude"], ["L0", "L0.attn", "L1.mlp", "L2"]
IDENT = {"model_id": "tiny", "steps": 3, "methods": METHODS}


def make_store(path, identity=IDENT):
    ds = build_template(METHODS, UNITS, [0, 0, 1, 2], ["block", "attn", "mlp", "block"], 2, 3, [0.5, 1.0],
                        ["local", "propagated"], ["teacher_forced"], tokens=np.arange(16).reshape(2, 8),
                        prompt_len=np.array([5, 5]), dense_free_tokens=np.ones((2, 3), dtype=np.int64),
                        candidates=None, attrs={"model_id": "tiny"})
    create_store(path, ds, identity)
    return ds


def cell_arrays(group, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.random(group[name].shape[2:]).astype(np.float32) for name in VARIABLES
            if name not in ("done", "free_tokens")}


def test_create_write_resume_and_read(tmp_path):
    path = tmp_path / "run.zarr"
    make_store(path)
    assert [p.name for p in tmp_path.iterdir()] == ["run.zarr"]  # no temporary left behind
    w = StoreWriter.open_for_resume(path, IDENT)
    assert not w.done().any()
    arrays = cell_arrays(w.group, 0)
    w.write_cell(1, 2, arrays, np.full((2, 3), 7), nonfinite=0)
    # one cell = its own chunk files, nothing else written for other cells
    assert sorted(p.name for p in (path / "kl" / "c" / "1").iterdir()) == ["2"]
    assert not (path / "kl" / "c" / "0").exists()
    with pytest.raises(PrunelensError, match="half-written: 1 of 8"):
        open_store(path)
    ds = open_store(path, allow_incomplete=True)
    np.testing.assert_array_equal(ds["kl"].isel(method=1, unit=2).values, arrays["kl"])
    assert np.isnan(ds["kl"].isel(method=0, unit=2).values).all()
    assert int(ds["free_tokens"].isel(method=0, unit=0).values[0, 0]) == -1  # never written: fill value
    assert ds["done"].values.sum() == 1 and bool(ds["done"].values[1, 2])
    assert ds["kl"].encoding["chunks"][:2] == (1, 1)
    np.testing.assert_array_equal(ds["tokens"].values, np.arange(16).reshape(2, 8))

    for mi in range(2):
        for ui in range(4):
            if (mi, ui) != (1, 2):
                w.write_cell(mi, ui, cell_arrays(w.group, 10 * mi + ui), np.zeros((2, 3)), nonfinite=1 if (mi, ui) == (0, 0) else 0)
    attrs = w.finalise()
    assert attrs["complete"] and attrs["nonfinite_cells"] == 1 and attrs["cells_done"] == 8
    ds = open_store(path)
    assert ds.attrs["complete"] and ds.attrs["schema_version"] == SCHEMA_VERSION
    assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())
    np.testing.assert_array_equal(ds["kl"].isel(method=1, unit=2).values, arrays["kl"])


def test_plain_writes_where_zarr_has_no_event_loop_equal_the_concurrent_ones(tmp_path, monkeypatch):
    """A cell written one variable after another (a zarr without ``zarr.core.sync``) gives the same chunks."""
    import sys

    stores = []
    for plain in (False, True):
        path = tmp_path / f"run{int(plain)}.zarr"
        make_store(path)
        w = StoreWriter.open_for_resume(path, IDENT)
        plain_writes = []
        with monkeypatch.context() as mp:
            set_item = zarr.Array.__setitem__
            mp.setattr(zarr.Array, "__setitem__", lambda arr, key, value: plain_writes.append(arr.name) or set_item(arr, key, value))
            if plain:
                mp.setitem(sys.modules, "zarr.core.sync", None)  # its import fails
            w.write_cell(1, 2, cell_arrays(w.group, 3), np.full((2, 3), 7), nonfinite=2)
        # plain: every metric, free_tokens, nonfinite, then done; concurrent: only done
        assert plain_writes == ([f"/{n}" for n in METRICS] + ["/free_tokens", "/nonfinite", "/done"] if plain else ["/done"])
        stores.append(zarr.open_group(str(path), mode="r"))
    for name in [*METRICS, "free_tokens", "nonfinite", "done"]:
        np.testing.assert_array_equal(stores[0][name][1, 2], stores[1][name][1, 2], err_msg=name)
    assert bool(stores[1]["done"][1, 2]) and int(stores[1]["nonfinite"][1, 2]) == 2
    assert np.isfinite(stores[1]["kl"][1, 2]).all()  # written, not the NaN fill value


def test_spearman_matches_scipy_on_unit_means(tmp_path):
    from scipy.stats import spearmanr

    path = tmp_path / "s.zarr"
    make_store(path)
    w = StoreWriter(path)
    rng = np.random.default_rng(3)
    for ui in range(4):
        for mi in range(2):
            w.write_cell(mi, ui, cell_arrays(w.group, rng.integers(1 << 30)), np.zeros((2, 3)), 0)
    table = spearman_table(path)
    g = zarr.open_group(str(path), mode="r")
    kl, pred = g["kl"][:], g["kl_pred"][:]
    want = spearmanr(pred[1, :, 1, 0, 0].mean(axis=(-1, -2)), kl[1, :, 1, 0, 0].mean(axis=(-1, -2))).statistic
    assert table["magnitude"]["propagated"]["teacher_forced"]["0.5"] == pytest.approx(want, abs=1e-6)


def test_resume_refuses_another_run(tmp_path):
    path = tmp_path / "run.zarr"
    make_store(path)
    with pytest.raises(PrunelensError, match="steps: store has 3, this run has 4"):
        StoreWriter.open_for_resume(path, {**IDENT, "steps": 4})
    with pytest.raises(PrunelensError, match="model_id"):
        StoreWriter.open_for_resume(path, {**IDENT, "model_id": "other"})
    other = tmp_path / "plain"
    other.mkdir()
    with pytest.raises(PrunelensError, match="not a prunelens store"):
        StoreWriter.open_for_resume(other, IDENT)
    with pytest.raises(PrunelensError, match="already exists"):
        make_store(path)


def test_reader_errors(tmp_path):
    with pytest.raises(PrunelensError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(PrunelensError, match="not a prunelens store"):
        open_store(tmp_path / "dir")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w", zarr_format=3).attrs["x"] = 1
    with pytest.raises(PrunelensError, match="not a prunelens probe store"):
        open_store(tmp_path / "foreign.zarr")
    path = tmp_path / "new.zarr"
    make_store(path)
    zarr.open_group(str(path), mode="r+").attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(PrunelensError, match="newer"):
        open_store(path)

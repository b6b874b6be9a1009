"""Store papercuts: unit coordinates in memory, long_name/units on variables, a decoder for JSON-string attrs."""

from __future__ import annotations

import json

import numpy as np
from rank_helpers import synthetic_store

from prunelens_store import decode_attrs, open_store
from prunelens_store.schema import VARIABLE_ATTRS, VARIABLES


def _write(tmp_path, ds):
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


def test_where_on_kind_drops_units_of_a_lazy_store(tmp_path):
    ds0 = synthetic_store(num_layers=3, attrs={"model_id": "m", "config_hash": "h", "complete": True})
    ds = open_store(_write(tmp_path, ds0))
    assert isinstance(ds["kind"].data, np.ndarray) and isinstance(ds["layer"].data, np.ndarray)
    attn = ds.where(ds.kind == "attn", drop=True)
    assert list(attn["unit"].values) == ["L0.attn", "L1.attn", "L2.attn"]
    want = ds0["kl"].sel(unit="L1.attn").values
    np.testing.assert_array_equal(attn["kl"].sel(unit="L1.attn").values, want)
    assert list(ds.where(ds.layer == 2, drop=True)["unit"].values) == ["L2", "L2.attn", "L2.mlp"]


def test_every_variable_has_long_name_and_units(tmp_path):
    assert set(VARIABLE_ATTRS) == set(VARIABLES)
    ds = open_store(_write(tmp_path, synthetic_store(num_layers=2, attrs={"model_id": "m", "config_hash": "h",
                                                                          "complete": True})))
    for name in VARIABLES:
        assert ds[name].attrs["long_name"] and ds[name].attrs["units"], name
    assert ds["kl"].attrs["units"] == "nat" and ds["cos_dev"].attrs["units"] == "1"
    # a store written without the attrs (older prunelens) gets them on read
    old = synthetic_store(num_layers=2, attrs={"model_id": "m", "config_hash": "h", "complete": True})
    for name in old.data_vars:
        old[name].attrs = {}
    ds = open_store(_write(tmp_path / "old", old))
    assert ds["kl_pred"].attrs["long_name"] == VARIABLE_ATTRS["kl_pred"][0]


def test_decode_attrs_turns_json_strings_into_objects():
    attrs = {"methods": json.dumps({"drop": {"name": "drop"}}), "identity": json.dumps({"a": [1, 2]}),
             "model_id": "m", "note": "{not json", "n": 3}
    got = decode_attrs(attrs)
    assert got["methods"] == {"drop": {"name": "drop"}} and got["identity"] == {"a": [1, 2]}
    assert got["model_id"] == "m" and got["note"] == "{not json" and got["n"] == 3

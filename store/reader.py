"""Open a probe store as a lazy ``xarray.Dataset``, with clear errors for what is not a usable store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError

from .schema import SCHEMA_VERSION, variables_for
from .writer import damaged_cells, describe_damage
from .zarr_warnings import quiet


def open_store(path: str | Path, allow_incomplete: bool = False, verify: bool = True) -> Any:
    """The store at ``path`` (lazy, dask-backed).

    Raises ``PrunelensError`` when ``path`` is not a prunelens store, was written by a newer
    schema, or is half-written (a probe still running or interrupted; ``allow_incomplete``
    opens it anyway: cells with ``done`` False are NaN). ``verify`` (default) reads every
    chunk of the done cells once: a deleted chunk or one that fails its checksum is an error
    naming the variable and cell, never a silently wrong or missing number.
    """
    import xarray as xr
    import zarr

    path = Path(path)
    if not path.exists():
        raise PrunelensError(f"{path}: no such store")
    if not (path / "zarr.json").is_file():
        raise PrunelensError(f"{path} is not a prunelens store (no zarr.json)")
    try:
        with quiet():
            group = zarr.open_group(str(path), mode="r", zarr_format=3)
            attrs = dict(group.attrs)
    except Exception as exc:
        raise PrunelensError(f"{path} is not a readable Zarr v3 store ({type(exc).__name__}: {exc})") from None
    if "schema_version" not in attrs:
        raise PrunelensError(f"{path} is a Zarr store but not a prunelens probe store (no schema_version)")
    version = int(attrs["schema_version"])
    if version > SCHEMA_VERSION:
        raise PrunelensError(f"{path} has store schema version {version}, newer than this prunelens reads "
                             f"({SCHEMA_VERSION}); upgrade prunelens")
    try:
        missing = [v for v in variables_for(version) if v not in group]
    except Exception as exc:  # a variable's metadata (zarr.json) is truncated or not JSON
        raise PrunelensError(f"{path} is damaged: a variable's metadata cannot be read "
                             f"({type(exc).__name__}: {exc})") from None
    if missing:
        raise PrunelensError(f"{path} is damaged or half-created: missing {', '.join(missing)}")
    if verify:
        try:
            damage = damaged_cells(group, path)
        except Exception as exc:  # noqa: BLE001 - ``done`` or ``nonfinite`` themselves unreadable
            raise PrunelensError(f"{path} is damaged: its done/nonfinite record cannot be read "
                                 f"({type(exc).__name__}: {exc})") from None
        if damage:
            raise PrunelensError(f"{path} is damaged: {describe_damage(group, damage)}; rerun the same prunelens probe "
                                 "command to recompute these cells")
    if not attrs.get("complete", False) and not allow_incomplete:
        import numpy as np

        done = np.asarray(group["done"][:], dtype=bool)
        raise PrunelensError(f"{path} is half-written: {int(done.sum())} of {done.size} (method, unit) cells done; "
                             "rerun the same prunelens probe command to finish it")
    root_meta = json.loads((path / "zarr.json").read_text())
    consolidated = "consolidated_metadata" in root_meta and attrs.get("complete", False)
    try:
        with quiet():
            ds = xr.open_zarr(str(path), consolidated=bool(consolidated), zarr_format=3)
    except Exception as exc:
        raise PrunelensError(f"{path}: cannot read the store ({type(exc).__name__}: {exc})") from None
    return with_conveniences(ds)


def with_conveniences(ds: Any) -> Any:
    """Unit coordinates in memory (``ds.where(ds.kind == "attn", drop=True)`` works on a lazy store) and
    ``long_name``/``units`` on every known variable (stores written before they were recorded get them too)."""
    from .schema import VARIABLE_ATTRS

    eager = {c: ds[c].variable.compute() for c in ("kind", "layer") if c in ds.coords}
    ds = ds.assign_coords(eager)
    for name, (long_name, units) in VARIABLE_ATTRS.items():
        if name in ds.data_vars:
            ds[name].attrs.setdefault("long_name", long_name)
            ds[name].attrs.setdefault("units", units)
    return ds


def decode_attrs(attrs: Any) -> dict[str, Any]:
    """A store's attrs with the JSON-string ones decoded (``identity``, ``methods``, ``versions``,
    ``spearman_kl_pred_vs_kl``, ...): Zarr attrs are flat, so nested values are stored as JSON text.
    ``decode_attrs(ds.attrs)["methods"]`` is then a dict; other values are returned as they are."""
    out: dict[str, Any] = {}
    for key, value in dict(attrs).items():
        if isinstance(value, str) and value[:1] in ("{", "[") and value[-1:] in ("}", "]"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out

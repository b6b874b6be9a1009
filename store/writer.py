"""Write a probe store: create it atomically from the schema template, fill (method, unit) cells, finalise.

* ``create_store`` writes metadata and the per-sample variables; per-unit variables are
  lazy (dask, ``compute=False``) so no data chunk exists until a cell is written. The store
  is built in a temporary directory and renamed into place: it either exists whole or not.
* ``StoreWriter.write_cell`` writes one cell's whole chunks (chunks are ``method=1, unit=1``),
  then ``done[method, unit]``; a run killed mid-cell leaves ``done`` False and the cell is
  simply written again on resume.
* ``open_for_resume`` refuses a store made for another model, prompts or settings and says
  which setting differs.
* ``finalise`` counts non-finite values, stores the Spearman correlation of predicted vs
  measured KL across units, marks the store complete and consolidates the metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunelens.errors import PrunelensError

from .schema import METRICS, SCHEMA_VERSION, template
from .stats import spearman
from .view import StoreView
from .zarr_warnings import quiet

EXTRA_CELL_VARS = {"nonfinite": ("method", "unit")}  # count of non-finite measured values per cell
IDENTITY_ATTR = "identity"  # JSON of what must match for a resume


def _encoding(ds: Any) -> dict[str, dict[str, Any]]:
    from zarr.codecs import ZstdCodec

    enc: dict[str, dict[str, Any]] = {}
    for name in ds.data_vars:
        dims = ds[name].dims
        chunks = tuple(1 if d in ("method", "unit") else ds.sizes[d] for d in dims)
        # checksum: a flipped byte in a chunk is an error when read, never a silently different number
        enc[name] = {"chunks": chunks, "compressors": (ZstdCodec(level=3, checksum=True),)}
    enc["free_tokens"]["fill_value"] = -1
    enc["nonfinite"]["fill_value"] = 0
    return enc


def build_template(
    methods: list[str], units: list[str], layers: list[int], kinds: list[str], samples: int, steps: int,
    temperatures: list[float], localities: list[str], timings: list[str], *, tokens: np.ndarray,
    prompt_len: np.ndarray, dense_free_tokens: np.ndarray, candidates: np.ndarray | None, attrs: dict[str, Any],
) -> Any:
    """The schema ``template`` plus the per-sample variables and ``nonfinite``."""
    ds = template(methods, units, layers, kinds, samples, steps, temperatures, localities, timings, attrs)
    for name, dims in EXTRA_CELL_VARS.items():
        ds[name] = (dims, np.zeros(tuple(ds.sizes[d] for d in dims), dtype=np.int64))
    ds["tokens"] = (("sample", "position"), np.asarray(tokens, dtype=np.int64))
    ds["prompt_len"] = (("sample",), np.asarray(prompt_len, dtype=np.int64))
    ds["dense_free_tokens"] = (("sample", "step"), np.asarray(dense_free_tokens, dtype=np.int64))
    if candidates is not None:
        ds["candidates"] = (("sample", "candidate"), np.asarray(candidates, dtype=np.int64))
    return ds


def create_store(path: str | Path, ds: Any, identity: Mapping[str, Any]) -> None:
    """Write ``ds``'s metadata and per-sample variables to a new store at ``path`` (atomically)."""
    from prunelens.paths import remove_stale_temps, temp_prefix

    path = Path(path)
    if path.exists():
        raise PrunelensError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # left by killed runs (their process is gone)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        lazy = ds.copy()
        lazy.attrs[IDENTITY_ATTR] = json.dumps(dict(identity), sort_keys=True)
        lazy.attrs["complete"] = False
        per_unit = [*METRICS, "free_tokens", "done", *EXTRA_CELL_VARS]
        for name in per_unit:
            lazy[name] = lazy[name].chunk({"method": 1, "unit": 1})
        with quiet():
            lazy.to_zarr(tmp / "store.zarr", mode="w", compute=False, consolidated=False, zarr_format=3,
                         encoding=_encoding(lazy))
        try:
            os.rename(tmp / "store.zarr", path)
        except OSError as exc:  # another process made it first (without the lock: two API callers)
            if path.exists():
                raise PrunelensError(f"{path} was created by another process at the same time; rerun to resume "
                                     "into it") from None
            raise PrunelensError(f"cannot create {path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def identity_mismatch(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The settings that differ between a store and a run, as readable lines."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a != b:
            out.append(f"{key}: store has {_short(a)}, this run has {_short(b)}")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


class StoreWriter:
    """Cell writes into an existing store (any process; each cell is its own set of chunks)."""

    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        with quiet():
            self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self.attrs = dict(self.group.attrs)
        self.methods = [str(m) for m in self.group["method"][:]]
        self.units = [str(u) for u in self.group["unit"][:]]
        self._open: dict[str, Any] = {}  # arrays opened once (each open reads its metadata)

    def _array(self, name: str) -> Any:
        if name not in self._open:
            self._open[name] = self.group[name]
        return self._open[name]

    @classmethod
    def open_for_resume(cls, path: str | Path, identity: Mapping[str, Any]) -> StoreWriter:
        """Open an existing store for this run, or raise ``PrunelensError`` saying what differs."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise PrunelensError(f"{path} exists and is not a prunelens store; choose another --out")
        try:
            writer = cls(path)
        except Exception as exc:
            raise PrunelensError(f"{path} exists but cannot be opened as a store "
                                 f"({type(exc).__name__}: {exc})") from exc
        version = writer.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PrunelensError(f"{path} has store schema version {version}, this prunelens writes "
                                 f"{SCHEMA_VERSION}; choose another --out")
        stored = json.loads(writer.attrs.get(IDENTITY_ATTR, "{}"))
        diff = identity_mismatch(stored, identity)
        if diff:
            raise PrunelensError(f"{path} was made for another run; refusing to mix results ({'; '.join(diff)}). "
                                 "Use another --out, or rerun with the store's settings to resume")
        writer.reset_damaged()
        return writer

    def reset_damaged(self) -> dict[tuple[int, int], str]:
        """Mark done cells whose data is missing or corrupt as not done (so a resume recomputes them)."""
        damage = damaged_cells(self.group, self.path)
        if damage:
            with quiet():
                for m, u in damage:
                    self.group["done"][m, u] = False
                self.group.attrs["complete"] = False
            self.attrs["complete"] = False
            import sys

            print(f"warning: {self.path}: {len(damage)} damaged cell(s) will be recomputed: "
                  f"{describe_damage(self.group, damage)}", file=sys.stderr)
        return damage

    def done(self) -> np.ndarray:
        return np.asarray(self.group["done"][:], dtype=bool)

    def write_cell(self, m: int, u: int, arrays: Mapping[str, np.ndarray], free_tokens: np.ndarray, nonfinite: int,
                   *, mark_done: bool = True) -> None:
        """Write every per-unit variable of cell (m, u) (whole chunks), then mark it done (or leave that to
        ``mark_done`` once the caller has checked the cell)."""
        with quiet():
            values: dict[str, Any] = {}
            for name in METRICS:
                arr = self._array(name)
                values[name] = np.asarray(arrays[name], dtype=arr.dtype)
                if values[name].shape != arr.shape[2:]:
                    raise ValueError(f"{name}: cell shape {values[name].shape} != store {arr.shape[2:]}")
            values["free_tokens"] = np.asarray(free_tokens, dtype=np.int64)
            values["nonfinite"] = np.int64(nonfinite)
            self._write_all(m, u, values)
            if mark_done:
                self._array("done")[m, u] = True  # last: a cell marked done has every variable on disk

    def mark_done(self, cells: list[tuple[int, int]]) -> None:
        """Mark cells written with ``mark_done=False`` as done."""
        with quiet():
            done = self._array("done")
            for m, u in cells:
                done[m, u] = True

    def _write_all(self, m: int, u: int, values: Mapping[str, Any]) -> None:
        """Every variable's chunk of cell (m, u), written concurrently on zarr's event loop (about half the
        time of one write after another); one after another where zarr has no such loop."""
        pairs = [(self._array(name), value) for name, value in values.items()]  # opened here, not on the loop
        try:
            from zarr.core.sync import sync

            targets = [(arr.async_array, value) for arr, value in pairs]
        except (ImportError, AttributeError):  # a zarr without that loop or property: the plain writes
            for arr, value in pairs:
                arr[m, u] = value
            return
        import asyncio

        async def write() -> None:
            await asyncio.gather(*(arr.setitem((m, u), value) for arr, value in targets))

        sync(write())

    def finalise(self, extra_attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Summaries into attrs (non-finite count, Spearman), ``complete``, consolidated metadata."""
        import zarr

        done = self.done()
        nonfinite = np.asarray(self.group["nonfinite"][:])
        attrs = {
            "nonfinite_cells": int((nonfinite[done] > 0).sum()),
            "nonfinite_values": int(nonfinite[done].sum()),
            "cells_done": int(done.sum()),
            "cells_total": int(done.size),
            "spearman_kl_pred_vs_kl": json.dumps(spearman_table(self.path)),
            "complete": bool(done.all()),
        }
        attrs.update(extra_attrs or {})
        with quiet():
            self.group.attrs.update(attrs)
            zarr.consolidate_metadata(str(self.path), zarr_format=3)
        return attrs


def spearman_table(path: str | Path) -> dict[str, Any]:
    """Spearman rank correlation across units of mean predicted vs mean measured KL.

    Nested ``{method: {locality: {timing: {temperature: rho}}}}``; the means are the readers'
    (``StoreView.unit_means``: units not done, or with a non-finite value, are left out);
    ``None`` when fewer than 3 units remain or one side is constant.
    """
    import xarray as xr

    with quiet():
        ds = xr.open_zarr(str(path), consolidated=False, zarr_format=3)
    view = StoreView(ds, path)
    units = view.labels("unit")
    out: dict[str, Any] = {}
    for m in view.labels("method"):
        for loc in view.labels("locality"):
            for tim in view.labels("timing"):
                for t in view.temperatures:
                    cell: dict[str, Any] = {"method": m, "temperature": t, "locality": loc, "timing": tim,
                                            "units": units}
                    rho = spearman(view.unit_means("kl_pred", **cell), view.unit_means("kl", **cell))
                    value = round(rho, 6) if np.isfinite(rho) else None
                    out.setdefault(m, {}).setdefault(loc, {}).setdefault(tim, {})[f"{t:g}"] = value
    return out


# -- one writer per store path ----------------------------------------------------------------
class StoreLock:
    """An exclusive lock on a store path: ``.NAME.lock`` beside it, held with ``flock``.

    The kernel releases it when the process exits, even on SIGKILL, so a killed run never
    leaves a stale lock. ``acquire`` does not wait: a second probe on the same path is
    refused with one line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.parent / f".{self.path.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        import fcntl

        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PrunelensError(f"another prunelens probe is writing {self.path} (lock {self.lock_path}); wait for it "
                                 "to finish, then rerun the same command to resume, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- done cells must hold data -----------------------------------------------------------------
# measured variables every probed cell writes (a chunk equal to the fill value, all NaN, is not
# stored by zarr: that happens only when the unit's output was NaN, and then ``nonfinite`` > 0)
DATA_VARS = ("cos_dev", "cos_dev_pred", "rel_norm", "kl", "kl_pred", "top1_agree")


def damaged_cells(group: Any, path: str | Path, *, read: bool = True) -> dict[tuple[int, int], str]:
    """``{(method, unit): reason}`` for cells marked done whose data is missing or fails its checksum.

    Missing: a measured variable has no chunk for the cell (deleted) while the cell counted no
    non-finite value. Unreadable (``read``): decoding the chunk fails (Zstd checksum, truncation).
    """
    path = Path(path)
    done = np.asarray(group["done"][:], dtype=bool)
    nonfinite = np.asarray(group["nonfinite"][:]) if "nonfinite" in group else np.zeros(done.shape, dtype=np.int64)
    out: dict[tuple[int, int], str] = {}
    cells = [tuple(int(i) for i in c) for c in np.argwhere(done)]
    for name in DATA_VARS:
        if name not in group:
            continue
        arr = group[name]
        cm, cu = arr.chunks[0], arr.chunks[1]
        rest = ["0"] * (arr.ndim - 2)  # the writer's chunks span every other dimension whole
        for m, u in cells:
            key = path / name / "c" / str(m // cm) / str(u // cu) / Path(*rest) if rest else \
                path / name / "c" / str(m // cm) / str(u // cu)
            if (m, u) not in out and nonfinite[m, u] == 0 and not key.is_file():
                out[(m, u)] = f"{name} chunk missing"
    if read:
        with quiet():
            for name in list(DATA_VARS) + ["free_tokens", "nonfinite"]:
                if name not in group:
                    continue
                arr = group[name]
                try:
                    arr[:]
                    continue
                except Exception:  # noqa: BLE001 - locate the bad cells one by one
                    pass
                for m, u in cells:
                    try:
                        arr[m, u]
                    except Exception as exc:  # noqa: BLE001
                        out.setdefault((m, u), f"{name} chunk unreadable ({type(exc).__name__})")
    return out


def describe_damage(group: Any, damage: Mapping[tuple[int, int], str]) -> str:
    """The first few damaged cells as ``kl chunk missing at (method=drop, unit=L3)``."""
    methods = [str(v) for v in group["method"][:]]
    units = [str(v) for v in group["unit"][:]]
    items = sorted(damage.items())
    text = "; ".join(f"{why} at (method={methods[m]}, unit={units[u]})" for (m, u), why in items[:3])
    return text + (f"; and {len(items) - 3} more cell(s)" if len(items) > 3 else "")

"""One reader over an opened probe store: the temperature policy, labels, done mask, prompts and unit means.

Every reader of a store (ranking, plans, reports, the TUI) goes through ``StoreView.of(ds)``,
so they agree on which temperature a request means and on what a unit's mean is, and the
means are computed once per (variable, method, unit) however many screens or rankings ask.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunelens.errors import PrunelensError

from .stats import cell_means
from .zarr_warnings import quiet

DEFAULT_TEMPERATURE = 1.0  # the temperature shown when none is asked for (or the store's nearest)
TEMPERATURE_ATOL = 1e-6  # an explicit temperature matches a store label within this
_REDUCED = ("sample", "step")  # a unit mean averages over these
_BATCH_VALUES = 1 << 23  # values read at once when computing unit means (64 MiB as float64)


def select_temperature(temperatures: Any, requested: float | None = None, *, exact: bool = False) -> float:
    """The store temperature label a request means (the one policy every reader uses).

    * ``requested`` None: the label nearest ``DEFAULT_TEMPERATURE`` (1.0), the first on a tie;
    * ``exact`` (a temperature the user typed): the label equal to it within ``TEMPERATURE_ATOL``,
      else a ``PrunelensError`` naming the store's temperatures;
    * otherwise (a browser stepping through labels): the nearest label.
    """
    temps = np.asarray(temperatures, dtype=np.float64).reshape(-1)
    if not len(temps):
        raise PrunelensError("the store has no temperatures")
    if requested is not None and exact:
        hit = np.nonzero(np.isclose(temps, float(requested), atol=TEMPERATURE_ATOL, rtol=0))[0]
        if not len(hit):
            raise PrunelensError(f"temperature {requested} is not in the store; it has "
                                 f"{', '.join(f'{t:g}' for t in temps)}")
        return float(temps[hit[0]])
    want = DEFAULT_TEMPERATURE if requested is None else float(requested)
    return float(temps[int(np.argmin(np.abs(temps - want)))])


@dataclass(frozen=True)
class StoredPrompts:
    """The prompts a store was probed on: each sample's token ids (prompt then dense continuation)."""

    rows: list[np.ndarray]  # per sample, the -1 left padding removed
    prompt_len: np.ndarray  # [sample]
    steps: int
    candidates: np.ndarray | None  # [sample, candidate] token ids, -1 = none

    def prompt_ids(self) -> list[list[int]]:
        """The prompts alone (without the continuation), as token-id lists."""
        return [[int(t) for t in row[: int(p)]] for row, p in zip(self.rows, self.prompt_len)]


class StoreView:
    """Read-side helpers over one lazy store ``Dataset``; get it with ``StoreView.of(ds)`` (cached per dataset)."""

    _views: dict[int, StoreView] = {}
    _views_lock = threading.Lock()

    def __init__(self, ds: Any, path: str | Path | None = None):
        self.ds = ds
        source = path if path is not None else getattr(ds, "encoding", {}).get("source")
        self.path = Path(source) if source is not None and Path(source).is_dir() else None
        # What may be kept: a lazy store's numbers change only when a cell is finished (``done`` flips),
        # and a complete one not at all; an in-memory dataset may be edited in place, so nothing is kept.
        self.lazy = "done" in ds and getattr(ds["done"], "chunks", None) is not None
        self.static = self.lazy and str(ds.attrs.get("complete", False)).lower() in ("true", "1")
        self._done: np.ndarray | None = None
        self._means: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, ds: Any, path: str | Path | None = None) -> StoreView:
        """The view of ``ds``, made once and kept while ``ds`` lives (so its cached means are shared)."""
        key = id(ds)
        with cls._views_lock:
            view = cls._views.get(key)
            if view is None or view.ds is not ds:
                view = cls._views[key] = cls(ds, path)
                weakref.finalize(ds, cls._forget, key, view)
            elif path is not None and view.path is None:
                view.path = Path(path)
        return view

    @classmethod
    def _forget(cls, key: int, view: StoreView) -> None:
        with cls._views_lock:
            if cls._views.get(key) is view:
                del cls._views[key]

    # -- labels ------------------------------------------------------------------
    @property
    def temperatures(self) -> list[float]:
        return [float(t) for t in self.ds["temperature"].values]

    def temperature(self, requested: float | None = None, *, exact: bool = False) -> float:
        """``select_temperature`` over this store's labels."""
        return select_temperature(self.temperatures, requested, exact=exact)

    def labels(self, dim: str) -> list[str]:
        return [str(v) for v in self.ds[dim].values]

    def check_label(self, dim: str, value: str) -> None:
        """A clear error when ``value`` is not one of the store's ``dim`` labels."""
        labels = self.labels(dim)
        if value not in labels:
            raise PrunelensError(f"{dim} {value!r} is not in the store; it has {', '.join(labels)}")

    # -- done mask and prompts -----------------------------------------------------
    @property
    def done(self) -> np.ndarray:
        """The ``[method, unit]`` done mask (all True for a dataset without one), re-read unless the store is
        complete."""
        if self._done is None or not self.static:
            self._sync()
        assert self._done is not None
        return self._done

    def _sync(self) -> None:
        """Read the done mask; forget the cached means when it changed or the dataset is in memory."""
        done = self._read_done()
        with self._lock:
            if not self.lazy or self._done is None or not np.array_equal(done, self._done):
                self._means.clear()
            self._done = done

    def _read_done(self) -> np.ndarray:
        if "done" not in self.ds:
            return np.ones((self.ds.sizes["method"], self.ds.sizes["unit"]), dtype=bool)
        if self.path is not None and (self.path / "done").is_dir():  # zarr directly: a third of dask's cost
            try:
                import zarr

                with quiet():
                    return np.asarray(zarr.open_array(str(self.path / "done"), mode="r")[:], dtype=bool)
            except Exception:  # noqa: BLE001 - fall back to the dataset's own read
                pass
        return np.asarray(self.ds["done"].values, dtype=bool)

    def done_for(self, method: str, units: list[str]) -> np.ndarray:
        """Whether each of ``units`` is done for ``method``."""
        mi = self.labels("method").index(method)
        index = {u: i for i, u in enumerate(self.labels("unit"))}
        done = self.done
        return np.asarray([bool(done[mi, index[u]]) for u in units], dtype=bool)

    def prompts(self) -> StoredPrompts:
        """The stored token ids of every sample, compacted, with clear errors for what cannot be replayed."""
        for var in ("tokens", "prompt_len"):
            if var not in self.ds:
                raise PrunelensError(f"the store has no {var!r} variable (token ids of its prompts); "
                                     "cannot replay them")
        tokens = np.asarray(self.ds["tokens"].values, dtype=np.int64)
        plen = np.asarray(self.ds["prompt_len"].values, dtype=np.int64)
        steps = int(self.ds.sizes["step"])
        rows = [t[t >= 0] for t in tokens]
        if any(len(r) < p + steps - 1 for r, p in zip(rows, plen)):
            raise PrunelensError("the store's token ids are shorter than prompt + steps")
        cands = np.asarray(self.ds["candidates"].values, dtype=np.int64) if "candidates" in self.ds else None
        return StoredPrompts(rows, plen, steps, cands)

    # -- slices and unit means ------------------------------------------------------
    def cell(self, var: str, *, method: str, locality: str, timing: str, temperature: float | None = None,
             space: str | None = None, units: list[str] | None = None) -> Any:
        """``ds[var]`` narrowed to one (method, locality, timing), the nearest temperature and ``space``
        (all spaces when None); lazy."""
        da = self.ds[var]
        idx: dict[str, Any] = {"method": method, "locality": locality, "timing": timing}
        if space is not None:
            idx["space"] = space
        if "temperature" in da.dims:
            idx["temperature"] = self.temperature(temperature)
        da = da.sel({k: v for k, v in idx.items() if k in da.dims})
        return da if units is None else da.sel(unit=list(units))

    def unit_means(self, var: str, *, method: str, temperature: float | None, locality: str, timing: str,
                   units: list[str], space: str | None = None) -> np.ndarray:
        """Per-unit mean of ``var`` over samples and steps at one (method, temperature, locality, timing, space).

        ``temperature`` must be one of the store's labels (``temperature()`` gives one; None: the
        default). Units not done give NaN; a done unit's NaN or inf is kept (``stats.cell_means``).
        Cached: each (variable, method, unit) is read once, whatever slice is asked for later.
        For a variable with a ``space`` dim and ``space`` None, the result is ``[unit, space]``.
        """
        rows, dims = self._unit_rows(var, method, units)
        index: list[Any] = []
        for dim in dims:
            if dim == "locality":
                index.append(self._index(dim, locality))
            elif dim == "timing":
                index.append(self._index(dim, timing))
            elif dim == "temperature":
                t = self.temperature(temperature, exact=temperature is not None)
                index.append(self.temperatures.index(t))
            elif dim == "space":
                index.append(slice(None) if space is None else self._index(dim, space))
            else:
                raise PrunelensError(f"{var}: cannot take a unit mean over dimension {dim!r}")
        return np.array(rows[tuple([slice(None), *index])], dtype=np.float64)

    def _index(self, dim: str, label: str) -> int:
        self.check_label(dim, label)
        return self.labels(dim).index(label)

    def _unit_rows(self, var: str, method: str, units: list[str]) -> tuple[np.ndarray, list[str]]:
        """``[unit, *other dims]`` means of ``var`` (computed once per unit) and the other dims' names."""
        if var not in self.ds:
            raise PrunelensError(f"the store has no {var!r} variable")
        self.check_label("method", method)
        da = self.ds[var]
        dims = [d for d in da.dims if d not in ("method", "unit", *_REDUCED)]
        done_all = self.done  # (re-)reads the mask first: stale means are dropped
        with self._lock:
            cache = self._means.setdefault((var, method), {})
            missing = list(dict.fromkeys(u for u in units if u not in cache))
        if missing:
            mi = self.labels("method").index(method)
            position = {u: i for i, u in enumerate(self.labels("unit"))}
            done = np.asarray([done_all[mi, position[u]] for u in missing], dtype=bool)
            cell = da.isel(method=mi).transpose("unit", *dims, *_REDUCED)
            computed: dict[str, np.ndarray] = {}
            per_unit = int(np.prod([self.ds.sizes[d] for d in (*dims, *_REDUCED)]))
            batch = max(1, _BATCH_VALUES // max(1, per_unit))  # units read together: memory stays bounded
            for lo in range(0, len(missing), batch):
                names = missing[lo : lo + batch]
                values = np.asarray(cell.isel(unit=[position[u] for u in names]).values)  # [unit, *dims, sample, step]
                rest = values.shape[1 : 1 + len(dims)]
                flat = values.reshape(len(names) * int(np.prod(rest)), -1)
                means = cell_means(flat, np.repeat(done[lo : lo + batch], int(np.prod(rest))))
                computed.update(zip(names, means.reshape(len(names), *rest)))
            if not self.lazy:  # in memory: computed for this call only
                cache = {**cache, **computed}
            else:
                with self._lock:
                    cache.update(computed)
        empty = np.zeros((0, *(self.ds.sizes[d] for d in dims)))
        return (np.stack([cache[u] for u in units]) if units else empty), dims

"""Rank units by how safely they can be compressed (safest first).

A ranking strategy is a ``Ranker`` class registered through the ``register_rankers`` hook.
Store rankers read a probe store (``kl_pred``, ``kl``); dense rankers run one dense pass
over calibration text (``block_influence``, ``angular``, ``llm_drop``). Every score is
"lower = safer to compress".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from prunelens.errors import PrunelensError, unknown
from prunelens.params import Param, Parameterized, parse_spec
from prunelens.units import KINDS, Unit

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("unit", "layer", "kind", "score", "kl_pred", "kl", "cos_dev_embedding", "cos_dev_logit",
           "cos_dev_probability", "rank")
NEEDS = ("store", "dense")


@dataclass
class RankContext:
    """Everything a ranker may look at."""

    ds: Any  # xarray Dataset (probe store) or None
    method: str | None
    kind: str | None
    temperature: float
    locality: str = "propagated"
    timing: str = "teacher_forced"
    loaded: Any = None  # LoadedModel, loaded lazily from the store's model_id when a dense ranker needs it
    units: list[Unit] = field(default_factory=list)
    calib_ids: Any = None  # token ids for dense rankers (default: calibration windows of real text)

    def model(self):
        """The LoadedModel (loaded from the store's ``model_id`` on first use; its hash is checked)."""
        if self.loaded is None:
            if self.ds is None or "model_id" not in self.ds.attrs:
                raise PrunelensError("this ranker needs the model: pass loaded=... (the store names no model_id)")
            from prunelens.model.loading import load_model

            self.loaded = load_model(str(self.ds.attrs["model_id"]))
        want = None if self.ds is None else self.ds.attrs.get("config_hash")
        if want and want != self.loaded.config_hash:
            raise PrunelensError(f"model config hash {self.loaded.config_hash} does not match the store's {want}")
        return self.loaded


class Ranker(Parameterized):
    """Base class of a ranking strategy: ``score(ctx)`` maps unit names to scores (lower = safer)."""

    kind = "ranker"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs: ClassVar[str] = "store"  # "store" | "dense"
    unit_kinds: ClassVar[tuple[str, ...]] = KINDS
    params: ClassVar[dict[str, Param]] = {}
    spans_blocks: ClassVar[bool] = False  # plans n consecutive blocks at once (``consecutive_blocks``)

    def score(self, ctx: RankContext) -> dict[str, float]:
        raise NotImplementedError

    def consecutive_blocks(self, ctx: RankContext, n: int) -> list[str]:
        """The ``n`` consecutive blocks to compress together (rankers with ``spans_blocks``)."""
        raise PrunelensError(f"ranker {self.name!r} does not choose consecutive blocks")


def ranker_registry() -> dict[str, tuple[str, type[Ranker]]]:
    """strategy name -> (plugin name, Ranker class) from every plugin."""
    from prunelens.plugins import registry

    return registry("register_rankers", key=lambda cls: cls.name)


def get_ranker(by: str, **params: Any) -> Ranker:
    """A validated ranker from a spec ``name`` or ``name:key=value,...`` (``params.parse_spec``); keyword
    ``params`` add to the spec's (giving one parameter both ways is refused)."""
    name, values = parse_spec(by, "ranker")
    reg = ranker_registry()
    if name not in reg:
        raise unknown("ranking strategy", name, reg)
    both = sorted(set(values) & {k for k, v in params.items() if v is not None})
    if both:
        raise PrunelensError(f"ranker parameter(s) {', '.join(both)} given both in {by!r} and separately")
    return reg[name][1](**{**params, **values})


# -- reading the store (through prunelens_store.StoreView) ----------------------------
def resolve_method(ds: Any, method: str | None) -> str:
    """The store's method label naming the same method as ``method`` with the same effective parameters
    (``methods.match_spec``: both sides canonicalised; ``wanda:sparsity=0.5`` matches ``wanda``)."""
    labels = [str(v) for v in ds["method"].values]
    if method is None:
        if len(labels) == 1:
            return labels[0]
        raise PrunelensError(f"the store has several methods; choose one with --method: {', '.join(labels)}")
    from prunelens.compression.methods import match_spec

    hit = match_spec(method, labels)
    if hit is not None:
        return hit
    raise PrunelensError(f"method {method!r} is not in the store; it has {', '.join(labels)}")


def store_units(ds: Any, kind: str | None) -> list[Unit]:
    """The store's units (in store order) of one kind, or all."""
    if kind is not None and kind not in KINDS:
        raise unknown("unit kind", kind, KINDS)
    units = [Unit.parse(str(u)) for u in ds["unit"].values]
    out = [u for u in units if kind is None or u.kind == kind]
    if not out:
        raise PrunelensError(f"the store has no {kind} units")
    return out


def store_means(ds: Any, *, method: str, temperature: float, locality: str, timing: str,
                units: list[Unit]) -> dict[str, np.ndarray]:
    """Per-unit means over samples and steps of kl_pred, kl and cos_dev per space (the ranking columns).

    ``StoreView.unit_means``: a cell not probed yet (``done`` False) gives NaN; a probed cell's
    non-finite values are never skipped (one NaN step makes the unit's mean NaN, one inf makes
    it inf; see ``nonfinite_units``), so a diverged unit can never look safe. ``temperature``
    must be one of the store's (a clear error otherwise). Repeated calls on one dataset are free.
    """
    from prunelens_store import StoreView
    from prunelens_store.schema import SPACES

    view = StoreView.of(ds)
    for dim, val in (("locality", locality), ("timing", timing)):
        view.check_label(dim, val)
    cell = {"method": method, "temperature": view.temperature(temperature, exact=True), "locality": locality,
            "timing": timing, "units": [u.name for u in units]}
    out = {var: view.unit_means(var, **cell) for var in ("kl_pred", "kl")}
    for space in SPACES:
        out[f"cos_dev_{space}"] = view.unit_means("cos_dev", space=space, **cell)
    return out


def nonfinite_units(df: Any) -> list[str]:
    """Units of a ranking whose store means are not finite (a NaN or inf in a probed cell)."""
    cols = [c for c in ("kl_pred", "kl", "cos_dev_embedding", "cos_dev_logit", "cos_dev_probability") if c in df]
    if not cols or not len(df):
        return []
    vals = df[cols].to_numpy(dtype=np.float64)
    probed = set(df.attrs.get("probed_units", []))
    return [str(u) for u, row in zip(df["unit"], vals)
            if np.isinf(row).any() or (np.isnan(row).any() and str(u) in probed)]


def nonfinite_note(ds: Any, df: Any = None) -> str:
    """One line about non-finite results in the store (and the ranking), or "" when there are none."""
    a = getattr(ds, "attrs", {}) or {}
    cells = int(a.get("nonfinite_cells", 0) or 0)
    units = nonfinite_units(df) if df is not None else []
    if not cells and not units:
        return ""
    text = f"the store has {cells} cell(s) with non-finite values ({int(a.get('nonfinite_values', 0) or 0)} values)"
    if units:
        from prunelens.safe_text import clean

        shown = ", ".join(clean(u) for u in units[:8]) + (", ..." if len(units) > 8 else "")
        text += f"; non-finite here: {shown} (inf ranks last; NaN is left unranked and never planned)"
    return text


# -- the public entry point ----------------------------------------------------------
def rank_units(ds: Any, *, method: str, kind: str | None, temperature: float, by: str = "kl_pred",
               locality: str = "propagated", timing: str = "teacher_forced", loaded: Any = None,
               calib_ids: Any = None, **ranker_params: Any) -> pd.DataFrame:
    """Units of one kind (or all) sorted safest first, with store metrics averaged over samples and steps.

    ``score`` is the chosen strategy's score (lower = safer); ties keep store order; a unit
    whose measurement overflowed (inf) ranks after every finite one; units without a score
    (cells not probed yet: NaN) come last with no rank.
    """
    import pandas as pd

    ranker = get_ranker(by, **ranker_params)
    if ds is None:
        if loaded is None:
            raise PrunelensError("rank_units needs a probe store or a loaded model")
        from prunelens.units import all_units

        units = all_units(loaded.adapter.num_layers, [kind] if kind else KINDS)
        method_label = method
        means = {c: np.full(len(units), np.nan) for c in COLUMNS[4:9]}
    else:
        method_label = resolve_method(ds, method)
        units = store_units(ds, kind)
        means = store_means(ds, method=method_label, temperature=temperature, locality=locality, timing=timing,
                            units=units)
    allowed = [u for u in units if u.kind in ranker.unit_kinds]
    if not allowed:
        raise PrunelensError(f"ranker {by!r} scores {', '.join(ranker.unit_kinds)} units, not {kind}")
    keep = [u in set(allowed) for u in units]
    units = allowed
    means = {k: np.asarray(v)[keep] for k, v in means.items()}
    ctx = RankContext(ds, method_label, kind, temperature, locality, timing, loaded, units, calib_ids)
    scores = ranker.score(ctx)
    score = np.array([scores.get(u.name, np.nan) for u in units], dtype=np.float64)
    df = pd.DataFrame({"unit": [u.name for u in units], "layer": [u.layer for u in units],
                       "kind": [u.kind for u in units], "score": score, **means})
    order = sort_order(score)
    df = df.iloc[order].reset_index(drop=True)
    scored = ~np.isnan(df["score"].to_numpy(dtype=np.float64))
    df["rank"] = pd.array([i + 1 if f else None for i, f in enumerate(scored)], dtype="Int64")
    df.attrs.update({"by": by, "method": method_label, "temperature": float(temperature), "locality": locality,
                     "timing": timing, "needs": ranker.needs, "probed_units": _probed(ds, method_label, units)})
    return df[list(COLUMNS)]


def _probed(ds: Any, method: str, units: list[Unit]) -> list[str]:
    """Names of ``units`` whose cell for ``method`` is done (all of them without a store)."""
    if ds is None:
        return [u.name for u in units]
    from prunelens_store import StoreView

    done = StoreView.of(ds).done_for(method, [u.name for u in units])
    return [u.name for u, d in zip(units, done) if d]


def sort_order(score: np.ndarray) -> np.ndarray:
    """Ascending and stable; +inf after every finite score, NaN (unscored) last."""
    score = np.asarray(score, dtype=np.float64)
    return np.lexsort((np.where(np.isnan(score), np.inf, score), np.isnan(score)))


def load_store(path: Any) -> Any:
    """Open a probe store lazily (``prunelens_store.open_store``)."""
    from prunelens_store import open_store

    return open_store(path)

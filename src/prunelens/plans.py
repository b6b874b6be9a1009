"""Plans: which units to compress, chosen from a ranking under a budget, as data.

A plan is canonical JSON (schema version ``PLAN_SCHEMA_VERSION``): model id + config hash,
method + params, the ordered units with their predicted KL (and, after ``apply`` +
``validate``, the measured KL), temperature, budget, strategy, store path. Block drops also
export as a mergekit ``passthrough`` config.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import PrunelensError
from .units import Unit

PLAN_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # version 1: one method for every unit; 2: each unit may carry its own
REQUIRED = ("schema_version", "model_id", "config_hash", "method", "units", "temperature", "budget", "strategy")


@dataclass
class PlanUnit:
    """One chosen unit, in plan order."""

    unit: str
    score: float | None = None  # the strategy's score (lower = safer)
    predicted_kl: float | None = None  # single-unit predicted KL from the store
    params: int | None = None  # parameters the unit holds
    cumulative_predicted_kl: float | None = None  # sum of predicted KL of the plan's units up to here
    cumulative_measured_kl: float | None = None  # measured KL with the plan's units up to here applied
    method: str | None = None  # schema 2: this unit's own method spec (None: the plan's method)


@dataclass
class Plan:
    model_id: str
    config_hash: str
    method: str
    units: list[PlanUnit]
    temperature: float
    budget: int | float | str  # schema 2 also: "sparsity=0.6", "bits=3.5", "bytes=...", "units=4"
    strategy: str
    method_params: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    locality: str = "propagated"
    timing: str = "teacher_forced"
    iterative: bool = False
    num_layers: int | None = None
    store_path: str | None = None
    prompts_hash: str | None = None
    predicted_kl_total: float | None = None
    measured_kl_total: float | None = None
    measured: dict[str, Any] = field(default_factory=dict)  # validation details (checkpoint, agreement...)
    eval: dict[str, Any] = field(default_factory=dict)  # task -> metrics, after apply + eval
    allocation: dict[str, Any] = field(default_factory=dict)  # schema 2: allocator, budget reached, optimality gap...
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = PLAN_SCHEMA_VERSION

    # -- views ---------------------------------------------------------------------
    def unit_objects(self) -> list[Unit]:
        return [Unit.parse(u.unit) for u in self.units]

    def unit_methods(self) -> list[tuple[Unit, str]]:
        """Each unit with its effective method spec (its own, else the plan's), in plan order."""
        return [(Unit.parse(u.unit), u.method or self.method) for u in self.units]

    @property
    def is_mixed(self) -> bool:
        return len({spec for _, spec in self.unit_methods()}) > 1

    @property
    def unit_names(self) -> list[str]:
        return [u.unit for u in self.units]

    def kept_layer_ranges(self) -> list[tuple[int, int]]:
        """Half-open ``[start, end)`` ranges of the layers a block-drop plan keeps."""
        if self.num_layers is None:
            raise PrunelensError("the plan does not record the model's layer count")
        units = self.unit_objects()
        if any(u.kind != "block" for u in units):
            raise PrunelensError("only block-drop plans map to layer ranges (this plan has sublayer units)")
        dropped = {u.layer for u in units}
        ranges: list[tuple[int, int]] = []
        start = None
        for i in range(self.num_layers + 1):
            keep = i < self.num_layers and i not in dropped
            if keep and start is None:
                start = i
            elif not keep and start is not None:
                ranges.append((start, i))
                start = None
        return ranges

    def to_mergekit_yaml(self) -> str:
        """A mergekit ``passthrough`` config whose slices are the kept layer ranges (block drops only)."""
        import yaml

        specs = sorted({spec for _, spec in self.unit_methods()})
        if any(spec.split(":", 1)[0] != "drop" for spec in specs):
            raise PrunelensError(f"mergekit export is for drop plans; this plan uses {', '.join(specs)}")
        ranges = self.kept_layer_ranges()
        if not ranges:
            raise PrunelensError("the plan drops every layer; nothing to export")
        source = mergekit_source(self.model_id)
        config = {
            "slices": [{"sources": [{"model": source, "layer_range": [a, b]}]} for a, b in ranges],
            "merge_method": "passthrough",
            "dtype": "float32",
        }
        header = (f"# prunelens plan: drop {', '.join(self.unit_names)} ({self.strategy}, T={self.temperature:g})\n"
                  + (f"# model: {source} is the checkpoint of prunelens model {self.model_id!r}\n"
                     if source != self.model_id else "")
                  + "# layer_range is half-open [start, end), as in mergekit\n")
        return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)

    # -- (de)serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write canonical JSON atomically (temp file in the same folder, then rename)."""
        return atomic_write(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "plan") -> Plan:
        if not isinstance(d, dict):
            raise PrunelensError(f"{source}: not a plan (expected a JSON object)")
        version = d.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise PrunelensError(f"{source}: plan schema version {version!r} is not supported "
                                 f"(this prunelens reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))})")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise PrunelensError(f"{source}: plan is missing field(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise PrunelensError(f"{source}: unknown plan field(s) {', '.join(unknown)}")
        if not isinstance(d["units"], list) or not d["units"]:
            raise PrunelensError(f"{source}: the plan has no units")
        units = []
        for item in d["units"]:
            if isinstance(item, str):
                item = {"unit": item}
            if not isinstance(item, dict) or "unit" not in item:
                raise PrunelensError(f"{source}: bad unit entry {item!r}")
            bad = set(item) - set(PlanUnit.__dataclass_fields__)
            if bad:
                raise PrunelensError(f"{source}: unknown unit field(s) {', '.join(sorted(bad))}")
            Unit.parse(str(item["unit"]))  # raises a clear error for a bad name
            if item.get("method") is not None and not isinstance(item["method"], str):
                raise PrunelensError(f"{source}: unit {item['unit']}: method must be a spec string")
            units.append(PlanUnit(**item))
        # a version-1 plan is a version-2 plan whose units all use the plan's method
        return cls(**{**d, "units": units, "schema_version": PLAN_SCHEMA_VERSION})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise PrunelensError(f"plan file not found: {path}")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrunelensError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        plan = cls.from_dict(d, source=str(path))
        plan.store_path = resolve_store_path(plan.store_path, p)
        return plan

    # -- checks --------------------------------------------------------------------
    def validate_for(self, loaded: Any) -> None:
        """The loaded model is the plan's model (config hash) and every unit exists in it."""
        if loaded.config_hash != self.config_hash:
            raise PrunelensError(f"the plan was made for {self.model_id!r} (config hash {self.config_hash}); "
                                 f"the loaded model {loaded.model_id!r} has config hash {loaded.config_hash}")
        n = loaded.adapter.num_layers
        missing = [u.name for u in self.unit_objects() if not 0 <= u.layer < n]
        if missing:
            raise PrunelensError(f"plan unit(s) {', '.join(missing)} do not exist: the model has layers L0-L{n - 1}")


def resolve_store_path(store_path: str | None, plan_file: str | os.PathLike[str]) -> str | None:
    """A plan's ``store_path`` as a usable path: absolute as written; relative first to the plan file's
    folder (a plan copied with its store), then to the working directory (older plans); a missing absolute
    path falls back to a store of that name beside the plan."""
    if not store_path:
        return store_path
    p, here = Path(store_path).expanduser(), Path(plan_file).resolve().parent
    candidates = [p] if p.is_absolute() else [here / p, p]
    if p.is_absolute():
        candidates.append(here / p.name)
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    return store_path


def mergekit_source(model_id: str) -> str:
    """What mergekit's ``model:`` needs for a prunelens model id: the checkpoint directory (absolute) of a
    bundled alias or a local directory, or the hub id as it is. A GGUF file has no such checkpoint."""
    from .models import BUNDLED, prepared_path

    if model_id in BUNDLED:
        return str(prepared_path(model_id).resolve())
    p = Path(model_id).expanduser()
    if p.suffix == ".gguf":
        raise PrunelensError(f"mergekit reads safetensors checkpoints, not GGUF ({model_id}); save it as a "
                             "checkpoint directory first (AutoModelForCausalLM ... save_pretrained) and plan on that")
    if p.is_dir():
        return str(p.resolve())
    return model_id


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` atomically with the umask's mode (``prunelens.fileio.atomic_write``)."""
    from .fileio import atomic_write as write

    return write(path, text)


# -- budgets -------------------------------------------------------------------------
def parse_budget(value: Any) -> int | float:
    """``4`` -> 4 units; ``0.25`` -> a quarter of the model's parameters."""
    if isinstance(value, bool):
        raise PrunelensError(f"bad budget {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise PrunelensError(f"bad budget {text!r}: a unit count (e.g. 4) or a parameter fraction (e.g. 0.1)") from None
    if isinstance(value, float) and value.is_integer() and value >= 1:
        value = int(value)
    if isinstance(value, int):
        if value < 1:
            raise PrunelensError(f"budget {value} must be at least 1 unit")
        return value
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    raise PrunelensError(f"bad budget {value!r}: a unit count >= 1 or a parameter fraction in (0, 1)")


def unit_param_counts(model_id: str, units: list[Unit], loaded: Any = None) -> tuple[dict[str, int], int]:
    """Parameters held by each unit and by the whole model (a meta model when not loaded: no weights read).

    Counted by unique storage (``paramcount``): tied input/output embeddings count once."""
    from .paramcount import meta_model, module_param_count

    if loaded is not None:
        model, adapter = loaded.model, loaded.adapter
    else:
        from .adapters import get_adapter

        model = meta_model(model_config(model_id))
        adapter = get_adapter(model)
    counts = {u.name: module_param_count(adapter.module(u)) for u in units}
    return counts, module_param_count(model)


def model_config(model_id: str) -> Any:
    """The model's transformers config, without loading weights."""
    from transformers import AutoConfig

    from .models import _resolve

    target, extra = _resolve(model_id)
    try:
        # a store names the model: never run code found beside it
        return AutoConfig.from_pretrained(target, **extra, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PrunelensError(f"cannot read the config of {model_id!r}: {str(exc).splitlines()[0]}") from None


def select_units(ranked: list[str], budget: int | float, counts: dict[str, int] | None = None,
                 total: int | None = None) -> list[str]:
    """Take units safest first: ``budget`` of them, or while their parameters fit in ``budget × total``.

    A unit overlapping one already taken (a block and a sublayer of the same layer) is skipped;
    under a parameter budget a unit too large to fit is skipped and smaller ones still considered.
    """
    chosen: list[str] = []
    used = 0
    taken: dict[int, set[str]] = {}
    for name in ranked:
        u = Unit.parse(name)
        kinds = taken.get(u.layer, set())
        if "block" in kinds or (u.kind == "block" and kinds) or u.kind in kinds:
            continue
        if isinstance(budget, int):
            if len(chosen) >= budget:
                break
        else:
            assert counts is not None and total is not None
            if used + counts[name] > budget * total:
                continue
            used += counts[name]
        chosen.append(name)
        taken.setdefault(u.layer, set()).add(u.kind)
    return chosen


# -- building plans ------------------------------------------------------------------
def plan_from_store(ds: Any, *, method: str, kind: str | None, temperature: float, by: str, budget: int | float | str,
                    locality: str = "propagated", timing: str = "teacher_forced", store_path: str | None = None,
                    loaded: Any = None, consecutive: bool | None = None, **ranker_params: Any) -> Plan:
    """One-shot plan: rank the store's units and take the safest under ``budget``.

    With ``by="angular"`` on blocks and a unit-count budget n, ``consecutive`` (default on)
    follows Gromov et al.: the n consecutive blocks starting at ``argmin_ℓ d(ℓ, n)``.
    """
    from .params import parse_spec
    from .ranking import rank_units

    budget = parse_budget(budget)
    by_name, by_values = parse_spec(by, "ranker")
    df = rank_units(ds, method=method, kind=kind, temperature=temperature, by=by, locality=locality, timing=timing,
                    loaded=loaded, **ranker_params)
    ranker_params = {**ranker_params, **by_values}
    from .ranking import nonfinite_units

    df = df[df["rank"].notna() & ~df["unit"].isin(nonfinite_units(df))]  # never plan a non-finite unit
    if df.empty:
        raise PrunelensError("no unit has a score (is the store's probe complete for this method?)")
    model_id = str(ds.attrs.get("model_id")) if ds is not None else loaded.model_id
    counts = total = None
    if isinstance(budget, float):
        counts, total = unit_param_counts(model_id, [Unit.parse(u) for u in df["unit"]], loaded)
    if consecutive is None:
        consecutive = by_name == "angular" and kind == "block" and isinstance(budget, int)
    if consecutive:
        chosen = _consecutive_blocks(ds, loaded, budget, ranker_params)
    else:
        chosen = select_units(list(df["unit"]), budget, counts, total)
    rows = df.set_index("unit")
    return make_plan(ds, chosen, rows, method=df.attrs["method"], kind=kind, temperature=temperature, by=by,
                     budget=budget, locality=locality, timing=timing, store_path=store_path, loaded=loaded,
                     counts=counts)


def _consecutive_blocks(ds: Any, loaded: Any, n: Any, ranker_params: dict[str, Any]) -> list[str]:
    import torch

    from prunelens_plugins.rankers import angular_span

    from .ranking import RankContext

    if not isinstance(n, int):
        raise PrunelensError("consecutive angular plans need a unit-count budget")
    ctx = RankContext(ds, None, "block", 1.0, loaded=loaded)
    model = ctx.model()
    from .data import token_windows

    ids = token_windows(model.tokenizer, int(ranker_params.get("samples", 8)), int(ranker_params.get("length", 128)),
                        split="calib", seed=int(ranker_params.get("seed", 0)))
    with torch.no_grad():
        d = angular_span(model.adapter, torch.as_tensor(ids), n)
    start = min(range(len(d)), key=d.__getitem__)
    return [f"L{i}" for i in range(start, start + n)]


def make_plan(ds: Any, chosen: list[str], rows: Any, *, method: str, kind: str | None, temperature: float, by: str,
              budget: int | float, locality: str, timing: str, store_path: str | None, loaded: Any = None,
              counts: dict[str, int] | None = None, iterative: bool = False) -> Plan:
    """A Plan from chosen unit names and a ranking table indexed by unit."""
    from .methods import parse_method

    units, cum = [], 0.0
    for name in chosen:
        pred = _num(rows.loc[name, "kl_pred"]) if name in rows.index else None
        cum = cum + pred if pred is not None and cum is not None else None
        units.append(PlanUnit(unit=name, score=_num(rows.loc[name, "score"]) if name in rows.index else None,
                              predicted_kl=pred, params=None if counts is None else counts.get(name),
                              cumulative_predicted_kl=cum))
    attrs = ds.attrs if ds is not None else {}
    try:
        params = dict(parse_method(method).values)
    except PrunelensError:
        params = {}
    if loaded is not None:
        num_layers = loaded.adapter.num_layers
    else:
        try:
            num_layers = int(model_config(str(attrs["model_id"])).num_hidden_layers)
        except (PrunelensError, KeyError, AttributeError):
            num_layers = int(max(ds["layer"].values)) + 1  # the store's own units (all layers when probed whole)
    return Plan(
        model_id=str(attrs.get("model_id", getattr(loaded, "model_id", ""))),
        config_hash=str(attrs.get("config_hash", getattr(loaded, "config_hash", ""))),
        method=method, method_params=params, units=units, temperature=float(temperature), budget=budget,
        strategy=by, kind=kind, locality=locality, timing=timing, iterative=iterative, num_layers=num_layers,
        store_path=None if store_path is None else str(store_path),
        prompts_hash=attrs.get("prompts_hash"), predicted_kl_total=cum if units else None,
    )


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def iterative_plan(ds: Any, *, method: str, kind: str | None, temperature: float, budget: int | float | str,
                   store_path: str | None = None, loaded: Any = None,
                   progress: Any = None) -> Plan:
    """Greedy plan: take the unit of lowest predicted KL, re-probe the rest on the already-compressed model, repeat.

    Each round re-probes with the probe engine on the store's prompts: the model with the
    chosen units already perturbed is the new reference (its own greedy continuation,
    teacher-forced, propagated to the output) and every remaining candidate is perturbed on
    top, scored by the mean ``Var_p(Δz)/(2T²)``. A unit's
    ``predicted_kl`` is its increment when chosen; the cumulative sum is the plan's prediction.
    Methods that need calibration statistics are not supported here (use the one-shot plan).
    """
    import numpy as np

    from .apply import perturbed, store_prompt_ids
    from .methods import parse_method
    from .models import load_model
    from .probe.engine import ProbeEngine, ProbeSettings
    from .probe.prompts import Prompts
    from .ranking import resolve_method, store_units

    budget = parse_budget(budget)
    label = resolve_method(ds, method)
    m = parse_method(label)
    if m.calibration != "none":
        raise PrunelensError(f"iterative plans support methods without calibration; {m.name!r} needs {m.calibration}")
    if loaded is None:
        loaded = load_model(str(ds.attrs["model_id"]))
    if ds.attrs.get("config_hash") and ds.attrs["config_hash"] != loaded.config_hash:
        raise PrunelensError("the store was made for another model (config hash differs)")
    candidates = [u for u in store_units(ds, kind) if u.kind in m.unit_kinds]
    counts = total = None
    if isinstance(budget, float):
        counts, total = unit_param_counts(loaded.model_id, candidates, loaded)
    prompts = Prompts(store_prompt_ids(ds), source="store")
    settings = ProbeSettings(steps=int(ds.sizes["step"]), temperatures=(float(temperature),), localities=("propagated",),
                             timings=("teacher_forced",), readout=str(ds.attrs.get("readout", "norm")))
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer is not None and loaded.tokenizer.pad_token_id is not None else 0
    chosen: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    while True:
        remaining = [u for u in candidates if u.name not in chosen]
        fits = [u for u in remaining if select_units(chosen + [u.name], budget if isinstance(budget, float) else len(chosen) + 1,
                                                     counts, total) == chosen + [u.name]]
        if not fits or (isinstance(budget, int) and len(chosen) >= budget):
            break
        with perturbed(m, loaded.adapter, [Unit.parse(c) for c in chosen]):
            engine = ProbeEngine(loaded.adapter, prompts, settings, pad_id=pad_id)
            engine.prepare()  # the already-compressed model's own greedy continuation is the new reference
            scores = {}
            for u in fits:
                if progress:
                    progress(f"round {len(chosen) + 1}: {u.name}")
                kl_pred = engine.measure(m, u).arrays["kl_pred"]
                scores[u.name] = {"kl_pred": float(np.nanmean(kl_pred))}
        best = min(fits, key=lambda u: scores[u.name]["kl_pred"])
        chosen.append(best.name)
        rows[best.name] = {"score": scores[best.name]["kl_pred"], "kl_pred": scores[best.name]["kl_pred"]}
    if not chosen:
        raise PrunelensError("no unit fits the budget")
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    return make_plan(ds, chosen, table, method=label, kind=kind, temperature=temperature, by="kl_pred", budget=budget,
                     locality="propagated", timing="teacher_forced", store_path=store_path, loaded=loaded,
                     counts=counts, iterative=True)

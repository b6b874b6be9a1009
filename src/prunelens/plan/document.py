"""Plans as data: which units to compress, with what, and what it is predicted to cost.

A plan is canonical JSON (schema version ``PLAN_SCHEMA_VERSION``; version 1 still loads):
model id + config hash, method + params, the ordered units with their predicted KL (and,
after ``apply`` + ``validate``, the measured KL), temperature, budget, strategy, store path.
Plans whose units are removed (drops) also export as a mergekit ``passthrough`` config.
Choosing the units is ``prunelens.plan.unit_selection``'s job; this module only holds and writes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError
from prunelens.fileio import atomic_write, json_safe, read_json
from prunelens.units import Unit

PLAN_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # version 1: one method for every unit; 2: each unit may carry its own
REQUIRED = ("schema_version", "model_id", "config_hash", "method", "units", "temperature", "budget", "strategy")
_NUM = (int, float)
# field -> (accepted JSON types, None accepted); a plan is data anyone can hand us: nothing else is taken
FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "model_id": ((str,), False), "config_hash": ((str,), False), "method": ((str,), False),
    "temperature": (_NUM, False), "budget": ((int, float, str), False), "strategy": ((str,), False),
    "method_params": ((dict,), False), "kind": ((str,), True), "locality": ((str,), False),
    "timing": ((str,), False), "iterative": ((bool,), False), "num_layers": ((int,), True),
    "store_path": ((str,), True), "prompts_hash": ((str,), True), "predicted_kl_total": (_NUM, True),
    "measured_kl_total": (_NUM, True), "measured": ((dict,), False), "eval": ((dict,), False),
    "allocation": ((dict,), False), "created": ((str,), False), "schema_version": ((int,), False),
}
UNIT_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "unit": ((str,), False), "score": (_NUM, True), "predicted_kl": (_NUM, True), "params": ((int,), True),
    "cumulative_predicted_kl": (_NUM, True), "cumulative_measured_kl": (_NUM, True), "method": ((str,), True),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object"}


def check_field_types(d: dict[str, Any], types: dict[str, tuple[tuple[type, ...], bool]], where: str) -> None:
    """One-line ``PrunelensError`` for the first field of ``d`` whose JSON type is not the one ``types`` names
    (``true`` is no number, a number no string); numbers must be finite, counts and the temperature positive."""
    import math

    from prunelens.safe_text import clean

    for name, value in d.items():
        accepted, nullable = types.get(name, ((object,), True))
        if value is None and nullable:
            continue
        ok = isinstance(value, accepted) and (bool in accepted or not isinstance(value, bool))
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if ok and name in ("temperature", "num_layers"):
            ok = value > 0
        if ok and name == "params":
            ok = value >= 0
        if not ok:
            want = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in accepted)) + (" or null" if nullable else "")
            want += " (finite)" if float in accepted else ""
            want += " (positive)" if name in ("temperature", "num_layers") else ""
            shown = clean(repr(value))
            raise PrunelensError(f"{where}: field {name!r} must be {want}, not {shown[:60]}"
                                 f"{'...' if len(shown) > 60 else ''}")


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
    data: dict[str, Any] = field(default_factory=dict)  # which text each input came from (splits, prompts, windows)
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

    @property
    def removes_units(self) -> bool:
        """Every unit's method removes it (``Method.removes_unit``, e.g. drop): the plan keeps layer ranges."""
        from prunelens.compression.methods import removes_unit

        return all(removes_unit(spec) for _, spec in self.unit_methods())

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

        if not self.removes_units:
            specs = sorted({spec for _, spec in self.unit_methods()})
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
        from prunelens.safe_text import yaml_scalar as q

        units = ", ".join(Unit.parse(u).name for u in self.unit_names)  # canonical names: nothing else
        header = (f"# prunelens plan: drop {units} (strategy {q(self.strategy)}, T={float(self.temperature):g})\n"
                  + (f"# model: {q(source)} is the checkpoint of prunelens model {q(self.model_id)}\n"
                     if source != self.model_id else "")
                  + "# layer_range is half-open [start, end), as in mergekit\n")
        return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)

    # -- (de)serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

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
        check_field_types({k: v for k, v in d.items() if k != "units"}, FIELD_TYPES, f"{source}: plan")
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
            check_field_types(item, UNIT_TYPES, f"{source}: plan unit")
            Unit.parse(item["unit"])  # raises a clear error for a bad name
            units.append(PlanUnit(**item))
        # a version-1 plan is a version-2 plan whose units all use the plan's method
        return cls(**{**d, "units": units, "schema_version": PLAN_SCHEMA_VERSION})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise PrunelensError(f"plan file not found: {path}")
        d = read_json(p, str(path))
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
    from prunelens.model.loading import BUNDLED, prepared_path

    if model_id in BUNDLED:
        return str(prepared_path(model_id).resolve())
    p = Path(model_id).expanduser()
    if p.suffix == ".gguf":
        raise PrunelensError(f"mergekit reads safetensors checkpoints, not GGUF ({model_id}); save it as a "
                             "checkpoint directory first (AutoModelForCausalLM ... save_pretrained) and plan on that")
    if p.is_dir():
        return str(p.resolve())
    return model_id


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
                raise PrunelensError(f"bad budget {text!r}: a unit count (e.g. 4) or a parameter fraction "
                                     "(e.g. 0.1)") from None
    if isinstance(value, float) and value.is_integer() and value >= 1:
        value = int(value)
    if isinstance(value, int):
        if value < 1:
            raise PrunelensError(f"budget {value} must be at least 1 unit")
        return value
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    raise PrunelensError(f"bad budget {value!r}: a unit count >= 1 or a parameter fraction in (0, 1)")

"""Budgets: what a compression plan may spend, and what each option saves against it.

A budget is one of

- ``units=N`` (or a bare ``N``): compress at least N units;
- ``params=f`` (or a bare fraction ``f`` in (0, 1), the plan schema-1 meaning): the compressed
  units hold at least ``f`` of the model's parameters;
- ``sparsity=s``: at least ``s`` of the decoder's linear weights are zero or removed;
- ``bits=b``: the decoder's linear weights average at most ``b`` bits (a dense weight counts
  ``dense_bits``, 16 by default; a weight quantized to k bits counts k; a pruned weight 0 (its
  mask index is not counted); the grid's scales and zero points are not counted);
- ``bytes=B`` (``400MB``, ``1.2GiB``...): the applied checkpoint's tensors take at most B bytes.
  Only dropped blocks make the checkpoint smaller (a dropped sublayer's output projection is
  zeroed, a pruned weight is a stored zero, a fake-quantized weight is stored as a float).

Every budget is turned into a *requirement* ``Σ saving(option) ≥ required`` so that an
allocator minimises summed predicted KL subject to one linear constraint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from prunelens.errors import PrunelensError, unknown
from prunelens.units import Unit

BUDGET_KINDS = ("units", "params", "sparsity", "bits", "bytes")
DENSE_BITS = 16.0
_SUFFIX = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class Budget:
    """One budget: ``kind`` in ``BUDGET_KINDS`` and its value."""

    kind: str
    value: float

    @property
    def text(self) -> str:
        v = int(self.value) if self.kind in ("units", "bytes") else self.value
        return f"{self.kind}={v:g}" if isinstance(v, float) else f"{self.kind}={v}"

    def __str__(self) -> str:
        return self.text


def _number(key: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
    if m is None:
        raise PrunelensError(f"budget {key}={text!r}: not a number")
    unit = m.group(2).lower()
    if unit and (key != "bytes" or unit not in _SUFFIX):
        raise PrunelensError(f"budget {key}={text!r}: unknown unit {m.group(2)!r}"
                             + (" (use B, KB, MB, GB, KiB, MiB, GiB)" if key == "bytes" else ""))
    try:
        value = float(m.group(1))
    except ValueError:
        raise PrunelensError(f"budget {key}={text!r}: not a number") from None
    if not math.isfinite(value):
        raise PrunelensError(f"budget {key}={text!r}: not a finite number")
    return value * _SUFFIX[unit]


def parse_budget_spec(value: Any) -> Budget:
    """``"sparsity=0.6"``, ``"bits=3.5"``, ``"bytes=400MB"``, ``"units=4"``, ``4`` (units), ``0.1``
    (params fraction)."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool) or value is None:
        raise PrunelensError(f"bad budget {value!r}")
    if isinstance(value, (int, float)):
        value = repr(value)
    text = str(value).strip()
    key, eq, rest = text.partition("=")
    if not eq:  # the schema-1 forms: a unit count or a parameter fraction
        try:
            num = float(text)
        except ValueError:
            raise PrunelensError(f"bad budget {text!r}: expected a unit count (4), a parameter fraction (0.1) or "
                                 f"key=value with key one of {', '.join(BUDGET_KINDS)}") from None
        key, rest = ("units", text) if num >= 1 or num <= 0 else ("params", text)
    key = key.strip().lower()
    if key not in BUDGET_KINDS:
        raise unknown("budget", key, BUDGET_KINDS, "(e.g. sparsity=0.6)")
    num = _number(key, rest)
    if key == "units":
        if not float(num).is_integer() or num < 1:
            raise PrunelensError(f"budget units={rest.strip()}: a whole number of units >= 1")
    elif key in ("params", "sparsity"):
        if not 0.0 < num < 1.0:
            raise PrunelensError(f"budget {key}={rest.strip()}: must lie strictly between 0 and 1")
    elif key == "bits":
        if not 0.0 < num <= 32.0:
            raise PrunelensError(f"budget bits={rest.strip()}: average bits per weight must lie in (0, 32]")
    elif key == "bytes":
        if num < 1:  # whole bytes: a fraction of one would round down to an impossible 0
            raise PrunelensError(f"budget bytes={rest.strip()}: must be at least 1 byte")
        num = float(math.floor(num))
    return Budget(key, float(num))


# -- sizes ------------------------------------------------------------------------------
@dataclass
class UnitSizes:
    """Parameter counts of every unit of a model (no weights need to be read)."""

    linear: dict[str, int]  # unit name -> weights of its linear layers
    params: dict[str, int]  # unit name -> every parameter of the unit
    linear_total: int  # decoder linear weights of every layer
    model_params: int
    bytes_per_param: int
    num_layers: int

    @property
    def model_bytes(self) -> int:
        return self.model_params * self.bytes_per_param


def unit_sizes(model: Any, bytes_per_param: int | None = None) -> UnitSizes:
    """Sizes of every unit (blocks and sublayers) of ``model``: a LoadedModel, or a model id (meta model from its
    config)."""
    if isinstance(model, str):
        from prunelens.model.adapters import get_adapter
        from prunelens.model.info import model_config
        from prunelens.model.parameter_counts import meta_model

        config = model_config(model)
        torch_model = meta_model(config)  # tied weights tied, as loading would (counted once below)
        adapter = get_adapter(torch_model)
        bpp = bytes_per_param or 4  # prunelens loads and saves float32 by default
    else:
        adapter = model.adapter
        torch_model = adapter.model
        bpp = bytes_per_param or next(torch_model.parameters()).element_size()
    from prunelens.model.parameter_counts import module_param_count

    linear: dict[str, int] = {}
    params: dict[str, int] = {}
    for u in adapter.units():
        linear[u.name] = sum(int(m.weight.numel()) for m in adapter.linears(u).values())
        params[u.name] = module_param_count(adapter.module(u))
    n = adapter.num_layers
    return UnitSizes(linear, params, sum(linear[f"L{i}"] for i in range(n)),
                     module_param_count(torch_model), int(bpp), n)


# -- what an option saves ----------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    """What a method does to each linear weight of a unit."""

    zero_fraction: float  # fraction of the unit's linear weights zeroed or removed
    bits: float | None = None  # bits per kept weight (None: unchanged, dense)
    removed: bool = False  # the unit is dropped


def option_effect(method: Any) -> Effect:
    """The ``Effect`` of a method: its own ``budget_effect()``, else read from ``pattern``/``sparsity``/``bits``."""
    own = method.budget_effect()
    if own is not None:
        return own if isinstance(own, Effect) else Effect(**own)
    if method.removes_unit:
        return Effect(1.0, 0.0, True)
    values = getattr(method, "values", {})
    zero = None
    if values.get("pattern"):
        from prunelens.compression.sparsity_masks import parse_pattern

        n_m = parse_pattern(values["pattern"])
        zero = None if n_m is None else 1.0 - n_m[0] / n_m[1]
    elif "sparsity" in values:
        zero = float(values["sparsity"])
    bits = float(values["bits"]) if "bits" in values and values["bits"] is not None else None
    if zero is None and bits is None:
        raise PrunelensError(f"method {method.spec!r} declares neither sparsity nor bits, so it cannot count against "
                             "a budget (a plugin method can define budget_effect())")
    return Effect(zero or 0.0, bits)


def saving(budget: Budget, unit: Unit | str, effect: Effect | None, sizes: UnitSizes,
           dense_bits: float = DENSE_BITS) -> float:
    """What compressing ``unit`` with ``effect`` (None = dense) contributes to the budget's requirement."""
    if effect is None:
        return 0.0
    name = unit if isinstance(unit, str) else unit.name
    kind = Unit.parse(name).kind
    if budget.kind == "units":
        return 1.0
    if budget.kind == "params":
        return float(sizes.params[name])
    n = sizes.linear[name]
    if budget.kind == "sparsity":
        return effect.zero_fraction * n
    if budget.kind == "bits":
        bits = dense_bits if effect.bits is None else effect.bits
        after = 0.0 if effect.removed else bits * (1 - effect.zero_fraction)
        return (dense_bits - after) * n
    if budget.kind == "bytes":
        return float(sizes.params[name] * sizes.bytes_per_param) if effect.removed and kind == "block" else 0.0
    raise PrunelensError(f"unknown budget kind {budget.kind!r}")


def requirement(budget: Budget, sizes: UnitSizes, dense_bits: float = DENSE_BITS) -> float:
    """The total saving the budget requires (``Σ saving ≥ requirement``)."""
    if budget.kind == "units":
        return budget.value
    if budget.kind == "params":
        return budget.value * sizes.model_params
    if budget.kind == "sparsity":
        return budget.value * sizes.linear_total
    if budget.kind == "bits":
        return max(0.0, (dense_bits - budget.value) * sizes.linear_total)
    if budget.kind == "bytes":
        return max(0.0, float(sizes.model_bytes - budget.value))
    raise PrunelensError(f"unknown budget kind {budget.kind!r}")


def achieved(budget: Budget, total_saving: float, sizes: UnitSizes, dense_bits: float = DENSE_BITS) -> float:
    """The budget quantity a plan reaches: units, params fraction, sparsity, average bits or checkpoint bytes."""
    if budget.kind == "units":
        return total_saving
    if budget.kind == "params":
        return total_saving / sizes.model_params
    if budget.kind == "sparsity":
        return total_saving / sizes.linear_total
    if budget.kind == "bits":
        return dense_bits - total_saving / sizes.linear_total
    return float(sizes.model_bytes - total_saving)


def option_level(budget: Budget, effect: Effect | None, dense_bits: float = DENSE_BITS) -> float:
    """The per-weight level an option sets, in the budget's terms: zero fraction (sparsity) or bits (bits)."""
    if budget.kind == "sparsity":
        return 0.0 if effect is None else effect.zero_fraction
    if budget.kind == "bits":
        if effect is None:
            return dense_bits
        bits = dense_bits if effect.bits is None else effect.bits
        return 0.0 if effect.removed else bits * (1 - effect.zero_fraction)
    raise PrunelensError(f"a level band applies to sparsity or bits budgets, not {budget.text}")

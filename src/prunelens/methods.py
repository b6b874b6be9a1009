"""The method interface: a compression method perturbs one unit reversibly.

A third party subclasses ``Method`` (or ``WeightMethod`` for per-matrix methods) and
registers it with ``register_methods``. Parameters are declared with ``Param`` and
validated before any work; ``perturb`` is a context manager that restores every weight
bit-for-bit on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Mapping

import torch

from .adapters import Adapter, linear_weight, set_linear_weight
from .errors import PrunelensError
from .params import Param, Parameterized  # noqa: F401  (Param is re-exported for plugins)
from .units import KINDS, Unit

CALIBRATIONS = ("none", "input_norms", "hessian")


class Method(Parameterized):
    """Base class of every compression method."""

    kind = "method"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    unit_kinds: ClassVar[tuple[str, ...]] = KINDS
    calibration: ClassVar[str] = "none"  # "none" | "input_norms" | "hessian"
    params: ClassVar[dict[str, Param]] = {}

    def check_unit(self, unit: Unit) -> None:
        if unit.kind not in self.unit_kinds:
            raise PrunelensError(f"method {self.name!r} cannot act on {unit.kind} units ({unit}); it acts on: {', '.join(self.unit_kinds)}")

    @contextmanager
    def perturb(self, adapter: Adapter, unit: Unit, stats: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Replace ``unit`` while the context is open; ``stats`` maps linear names to calibration statistics."""
        raise NotImplementedError
        yield  # pragma: no cover


class WeightMethod(Method):
    """A method that rewrites each linear weight of a unit independently."""

    def compress_weight(self, weight: torch.Tensor, stats: Any | None) -> torch.Tensor:
        """Return the new [out, in] weight (float32 in, float32 out)."""
        raise NotImplementedError

    @contextmanager
    def perturb(self, adapter: Adapter, unit: Unit, stats: Mapping[str, Any] | None = None) -> Iterator[None]:
        self.check_unit(unit)
        if self.calibration != "none" and stats is None:
            raise PrunelensError(f"method {self.name!r} needs calibration ({self.calibration}) statistics")
        originals = []
        try:
            for lname, mod in adapter.linears(unit).items():
                w = linear_weight(mod).detach().float()
                new = self.compress_weight(w, None if stats is None else stats[lname])
                originals.append((mod, mod.weight.data))
                set_linear_weight(mod, new)
            yield
        finally:
            for mod, data in reversed(originals):
                mod.weight.data = data


def method_registry() -> dict[str, tuple[str, type[Method]]]:
    """method name -> (plugin name, class) from every plugin."""
    from .plugins import registry

    return registry("register_methods", key=lambda cls: cls.name)


def parse_method(text: str) -> Method:
    """``wanda:sparsity=0.5,pattern=2:4`` -> a validated ``Method`` instance."""
    name, _, rest = text.strip().partition(":")
    reg = method_registry()
    if name not in reg:
        raise PrunelensError(f"unknown method {name!r}; available: {', '.join(sorted(reg)) or 'none'}")
    values: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise PrunelensError(f"bad method parameter {item!r} in {text!r}: expected key=value")
        values[key.strip()] = val.strip()
    return reg[name][1](**values)


def expand_method_specs(text: str) -> list[str]:
    """A level sweep -> one spec per level: ``wanda:sparsity=0.3,0.5`` -> ``["wanda:sparsity=0.3", "wanda:sparsity=0.5"]``.

    A comma-separated item without ``=`` is another value of the parameter before it; only
    numeric (int/float) parameters sweep. Several swept parameters give their cartesian
    product (in the order written). A spec without a sweep comes back unchanged (one item).
    """
    import itertools

    name, _, rest = text.strip().partition(":")
    reg = method_registry()
    if name not in reg:
        raise PrunelensError(f"unknown method {name!r}; available: {', '.join(sorted(reg)) or 'none'}")
    params = reg[name][1].params
    keys: list[str] = []
    values: dict[str, list[str]] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        if eq:
            key = key.strip()
            if key in values:
                raise PrunelensError(f"parameter {key!r} is given twice in {text!r}")
            keys.append(key)
            values[key] = [val.strip()]
        elif keys:
            last = keys[-1]
            p = params.get(last)
            if p is None or p.type not in (int, float):
                raise PrunelensError(f"only numeric parameters sweep over several values; {name}:{last} is not numeric "
                                     f"(in {text!r})")
            values[last].append(item)
        else:
            raise PrunelensError(f"bad method parameter {item!r} in {text!r}: expected key=value")
    if not keys:
        return [name]
    for key in keys:
        if len(set(values[key])) != len(values[key]):
            raise PrunelensError(f"a level is repeated in {key}={','.join(values[key])} (in {text!r})")
    return [name + ":" + ",".join(f"{k}={v}" for k, v in zip(keys, combo))
            for combo in itertools.product(*(values[k] for k in keys))]


def expand_methods(text: str) -> list[Method]:
    """``parse_method`` on every spec of a level sweep (see ``expand_method_specs``)."""
    return [parse_method(spec) for spec in expand_method_specs(text)]

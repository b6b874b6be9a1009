"""The method interface: a compression method perturbs one unit reversibly.

A third party subclasses ``Method`` (or ``WeightMethod`` for per-matrix methods) and
registers it with ``register_methods``. Parameters are declared with ``Param`` and
validated before any work; ``perturb`` is a context manager that restores every weight
bit-for-bit on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch

from .adapters import Adapter, linear_weight, set_linear_weight
from .errors import PrunelensError
from .units import KINDS, Unit

CALIBRATIONS = ("none", "input_norms", "hessian")


@dataclass(frozen=True)
class Param:
    """One method parameter: its type, default, help and an optional check (returns an error or None)."""

    type: Callable[[str], Any]
    default: Any
    help: str = ""
    check: Callable[[Any], str | None] | None = None

    def coerce(self, name: str, value: Any) -> Any:
        if value is None or value == "":
            return None if self.default is None else self.default
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return self.type(value)
        except (TypeError, ValueError):
            raise PrunelensError(f"parameter {name}={value!r}: expected {getattr(self.type, '__name__', self.type)}") from None


class Method:
    """Base class of every compression method."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    unit_kinds: ClassVar[tuple[str, ...]] = KINDS
    calibration: ClassVar[str] = "none"  # "none" | "input_norms" | "hessian"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any):
        unknown = set(values) - set(self.params)
        if unknown:
            known = ", ".join(self.params) or "none"
            raise PrunelensError(f"method {self.name!r} has no parameter {', '.join(sorted(unknown))} (parameters: {known})")
        self.values: dict[str, Any] = {}
        for pname, p in self.params.items():
            v = p.coerce(pname, values.get(pname))
            if p.check is not None and v is not None and (err := p.check(v)):
                raise PrunelensError(f"method {self.name!r}: {pname}={v!r}: {err}")
            self.values[pname] = v
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks; raise ``PrunelensError``."""

    def __getattr__(self, item: str) -> Any:
        values = self.__dict__.get("values", {})
        if item in values:
            return values[item]
        raise AttributeError(item)

    @property
    def spec(self) -> str:
        """Canonical text form, e.g. ``wanda:sparsity=0.5`` (only non-default values)."""
        parts = [f"{k}={v}" for k, v in self.values.items() if v != self.params[k].default]
        return self.name + (":" + ",".join(parts) if parts else "")

    def __repr__(self) -> str:
        return f"<Method {self.spec}>"

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

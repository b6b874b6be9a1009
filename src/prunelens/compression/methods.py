"""The method interface: a compression method perturbs one unit reversibly.

A third party subclasses ``Method`` (or ``WeightMethod`` for per-matrix methods) and
registers it with ``register_methods``. Parameters are declared with ``Param`` and
validated before any work; ``perturb`` is a context manager that restores every weight
bit-for-bit on exit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from prunelens.errors import PrunelensError, unknown, unknown_message
from prunelens.model.adapters import Adapter, linear_weight, set_linear_weight
from prunelens.params import Param, Parameterized, declaration_problem, format_spec, parse_spec, spec_items  # noqa: F401  (Param re-exported)
from prunelens.units import KINDS, Unit

CALIBRATIONS = ("none", "input_norms", "hessian")


class Method(Parameterized, ABC):
    """Base class of every compression method: a subclass sets ``name`` and defines ``perturb``.

    A class registered by a plugin is checked then (``method_problem``): one that cannot work is refused
    with one warning naming the plugin, and every other method keeps working.
    """

    kind = "method"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    unit_kinds: ClassVar[tuple[str, ...]] = KINDS
    calibration: ClassVar[str] = "none"  # "none" | "input_norms" | "hessian"
    params: ClassVar[dict[str, Param]] = {}
    # capabilities (a third-party method gets these defaults):
    removes_unit: ClassVar[bool] = False  # the unit is removed, not rewritten (drop): plans map to kept layer ranges
    # compresses a whole model with its own ``apply`` (set when a subclass defines it)
    whole_model: ClassVar[bool] = False
    # the llm-compressor modifier this method exports to (``prunelens plan --llmcompressor``); None: it has none.
    # ``llmcompressor_family`` says how its parameters map: "pruning" (sparsity, pattern) or "quantization"
    # (bits, sym, group_size); blocksize/percdamp, when the method has them, become block_size/dampening_frac.
    llmcompressor_modifier: ClassVar[str | None] = None
    llmcompressor_family: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "apply" in cls.__dict__ and "whole_model" not in cls.__dict__:
            cls.whole_model = True

    def check_unit(self, unit: Unit) -> None:
        if unit.kind not in self.unit_kinds:
            raise PrunelensError(f"method {self.name!r} cannot act on {unit.kind} units ({unit}); "
                                 f"it acts on: {', '.join(self.unit_kinds)}")

    @abstractmethod
    @contextmanager
    def perturb(self, adapter: Adapter, unit: Unit, stats: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Replace ``unit`` while the context is open, restoring it bit for bit on exit; ``stats`` maps
        linear names to calibration statistics."""
        raise NotImplementedError
        yield  # pragma: no cover

    def budget_effect(self) -> Any:
        """What the method does to a unit's linear weights under a budget: a ``prunelens.plan.budgets.Effect``
        (or a dict of its fields); None (the default) reads it from ``sparsity``/``pattern``/``bits``."""
        return None

    def apply(self, loaded: Any, units: list[Unit], progress: bool = False) -> dict[str, Any]:
        """Whole-model form: compress ``units`` of ``loaded`` for good and return a summary.

        Only methods with ``whole_model`` define it; ``WeightMethod``s are compressed layer by layer
        by ``prunelens.compression.sequential`` instead."""
        raise PrunelensError(f"method {self.name!r} cannot compress a whole model (it has no apply())")


class WeightMethod(Method):
    """A method that rewrites each linear weight of a unit independently."""

    @abstractmethod
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


LLMC_FAMILIES = ("pruning", "quantization")


def method_problem(cls: Any) -> str | None:
    """Why a class a plugin registers cannot work as a method, or None: not a ``Method``, no ``name``,
    a required override missing (``perturb``; ``compress_weight`` for a ``WeightMethod``), an invalid
    ``Param`` default, an unknown ``calibration`` or unit kind."""
    if not isinstance(cls, type) or not issubclass(cls, Method):
        return f"{cls!r} is not a subclass of prunelens.Method"
    if (err := declaration_problem(cls)) is not None:
        return err
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        return f"it does not define {', '.join(missing)}"
    if cls.calibration not in CALIBRATIONS:
        return unknown_message("calibration", cls.calibration, CALIBRATIONS)
    bad_kinds = [k for k in cls.unit_kinds if k not in KINDS]
    if bad_kinds:
        return unknown_message("unit kind", bad_kinds[0], KINDS)
    if cls.llmcompressor_modifier is not None and cls.llmcompressor_family not in LLMC_FAMILIES:
        return (f"llmcompressor_modifier {cls.llmcompressor_modifier!r} needs llmcompressor_family "
                f"{' or '.join(repr(f) for f in LLMC_FAMILIES)}")
    return None


def _method_key(cls: type[Method]) -> str:
    return cls.name


def method_registry() -> dict[str, tuple[str, type[Method]]]:
    """method name -> (plugin name, class) from every plugin (cached until the plugins change)."""
    from prunelens.plugins import registry

    return registry("register_methods", key=_method_key)


def method_class(spec: str) -> type[Method] | None:
    """The installed class of a method spec's name (``drop``, ``wanda:sparsity=0.5``), or None."""
    entry = method_registry().get(str(spec).split(":", 1)[0].strip())
    return None if entry is None else entry[1]


def removes_unit(spec: str) -> bool:
    """Whether the spec's method removes its units (``Method.removes_unit``); False for a method not installed."""
    cls = method_class(spec)
    return bool(cls is not None and cls.removes_unit)


def method_provenance(name: str) -> dict[str, Any]:
    """Which plugin, distribution and version provide method ``name`` (recorded in stores and checkpoints)."""
    from prunelens.plugins import provenance

    reg = method_registry()
    if name not in reg:
        raise unknown("method", name, reg)
    return provenance(reg[name][0])


def parse_method(text: str) -> Method:
    """``wanda:sparsity=0.5,pattern=2:4`` -> a validated ``Method`` instance (grammar: ``params.parse_spec``)."""
    name, values = parse_spec(text, "method")
    reg = method_registry()
    if name not in reg:
        raise unknown("method", name, reg)
    return reg[name][1](**values)


def canonical_spec(text: str) -> str:
    """The one canonical form of a method spec, used by every command before matching.

    Values are coerced to their declared types and defaults are dropped, so
    ``wanda:sparsity=0.50`` -> ``wanda`` and ``rtn:bits=8,sym=false`` -> ``rtn:bits=8,sym=False``;
    two specs name the same method exactly when their canonical forms are equal.
    """
    return parse_method(text).spec


def spec_key(text: str) -> str:
    """``canonical_spec`` when the method is installed; otherwise the spec with its parameters
    sorted (a store made with a plugin that is not installed still matches its own labels)."""
    name, values = parse_spec(text, "method")
    if name in method_registry():
        return canonical_spec(text)  # a bad parameter of an installed method is the user's error: raise it
    return format_spec(name, dict(sorted(values.items())))


def _label_key(label: str) -> str:
    try:
        return spec_key(label)
    except PrunelensError:  # a stored label this version cannot parse matches only itself
        return label


def match_spec(text: str, labels: list[str]) -> str | None:
    """The label among ``labels`` (e.g. a store's methods) naming the same method with the same
    effective parameters as ``text``, or None. Never matches different effective values:
    ``rtn`` (4 bits by default) does not match ``rtn:bits=8``."""
    if text in labels:
        return text
    want = spec_key(text)
    hits = [lab for lab in labels if _label_key(lab) == want]
    return hits[0] if hits else None


def expand_method_specs(text: str) -> list[str]:
    """A level sweep -> one spec per level: ``wanda:sparsity=0.3,0.5`` -> ``["wanda:sparsity=0.3",
    "wanda:sparsity=0.5"]``.

    A comma-separated item without ``=`` is another value of the parameter before it; only
    numeric (int/float) parameters sweep. Several swept parameters give their cartesian
    product (in the order written). A spec without a sweep comes back unchanged (one item).
    """
    import itertools

    name, items = spec_items(text, "method", sweep=True)
    reg = method_registry()
    if name not in reg:
        raise unknown("method", name, reg)
    params = reg[name][1].params
    keys: list[str] = []
    values: dict[str, list[str]] = {}
    for key, val in items:
        if key:
            if key in values:
                raise PrunelensError(f"parameter {key!r} is given twice in {text!r}")
            keys.append(key)
            values[key] = [val]
            continue
        last = keys[-1]
        p = params.get(last)
        if p is None or p.type not in (int, float):
            raise PrunelensError(f"only numeric parameters sweep over several values; {name}:{last} is not numeric "
                                 f"(in {text!r})")
        values[last].append(val)
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

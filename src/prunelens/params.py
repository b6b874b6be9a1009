"""Declared, validated parameters: shared by methods, tasks and rankers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from prunelens.errors import PrunelensError


@dataclass(frozen=True)
class Param:
    """One parameter: its type, default, help and an optional check (returns an error or None).

    ``flag`` spells its command-line option when ``--name`` (a bool: ``--name/--no-name``) does not
    fit, e.g. ``"--sym/--asym"``; ``option`` builds it."""

    type: Callable[[str], Any]
    default: Any
    help: str = ""
    check: Callable[[Any], str | None] | None = None
    flag: str | None = None

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
            expected = getattr(self.type, "__name__", self.type)
            raise PrunelensError(f"parameter {name}={value!r}: expected {expected}") from None

    def option(self, name: str, users: Sequence[str] = ()) -> Any:
        """This parameter as a ``click.Option`` named ``name`` (``group_size`` -> ``--group-size``) whose value
        is None unless given, so the method's own default applies; ``users`` (the methods that take it)
        end its help."""
        import click

        decl = self.flag or f"--{name.replace('_', '-')}"
        if self.type is bool and "/" not in decl:
            decl = f"{decl}/--no-{decl[2:]}"
        kinds: dict[Any, Any] = {int: click.INT, float: click.FLOAT}
        text = self.help[:1].upper() + self.help[1:]
        if users:
            text += f" (methods: {', '.join(users)})"
        if self.type is bool:
            return click.Option([decl, name], default=None, help=text)
        return click.Option([decl, name], type=kinds.get(self.type, click.STRING), default=None, help=text)

    def problem(self, name: str) -> str | None:
        """Why this declaration cannot work (its default fails its own type or check), or None.
        A default of None or "" marks a parameter the user must give: it is not checked."""
        if self.default is None or self.default == "":
            return None
        try:
            value = self.coerce(name, self.default)
            err = self.check(value) if self.check is not None else None
        except Exception as exc:  # noqa: BLE001 - a check that raises is as broken as one that refuses
            return f"parameter {name!r}: default {self.default!r} is invalid: {exc}"
        return None if not err else f"parameter {name!r}: default {self.default!r} is invalid: {err}"


def declaration_problem(cls: Any) -> str | None:
    """Why a registered plugin class cannot work (no ``name``, a ``params`` entry that is not a valid
    ``Param``), or None. Checked when a plugin registers it, before anything uses it."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        return "it has no name (set the class attribute name = '...')"
    params = getattr(cls, "params", {})
    if not isinstance(params, dict):
        return "params is not a dict of Param"
    for pname, param in params.items():
        if not isinstance(param, Param):
            return f"parameter {pname!r} is not a Param"
        if (err := param.problem(pname)) is not None:
            return err
    return None


def spec_items(text: str, kind: str = "method", sweep: bool = False) -> tuple[str, list[tuple[str, str]]]:
    """``name:key=value,...`` -> ``(name, [(key, value), ...])``: the one reader of the spec grammar.

    A value may hold ``:`` (``pattern=2:4``) but not ``,``; an empty value and a missing name are refused.
    With ``sweep`` an item without ``=`` is one more value of the key before it (``sparsity=0.3,0.5``) and
    comes back with the key ``""``; otherwise it is refused."""
    raw = str(text).strip()
    name, _, rest = raw.partition(":")
    name = name.strip()
    if not name:
        raise PrunelensError(f"empty {kind} name in {raw!r}: expected NAME or NAME:key=value,...")
    items: list[tuple[str, str]] = []
    for item in (s.strip() for s in rest.split(",")):
        if not item:
            continue
        key, eq, val = (x.strip() for x in item.partition("="))
        if not eq and sweep and items:
            key, val = "", item
        elif not eq or not key:
            raise PrunelensError(f"bad {kind} parameter {item!r} in {raw!r}: expected key=value")
        if not val:
            raise PrunelensError(f"{kind} parameter {key!r} has an empty value in {raw!r}: give a value, "
                                 "or leave the parameter out to use its default")
        items.append((key, val))
    return name, items


def parse_spec(text: str, kind: str = "method") -> tuple[str, dict[str, str]]:
    """``name:key=value,key=value`` -> ``(name, {key: value})``: the spec of a method, ranker, allocator or
    task (``spec_items``); a repeated key is refused (an empty value never silently means the default)."""
    name, items = spec_items(text, kind)
    values: dict[str, str] = {}
    for key, val in items:
        if key in values:
            raise PrunelensError(f"{kind} parameter {key!r} is given twice in {str(text).strip()!r}")
        values[key] = val
    return name, values


def parse_assignments(items: Iterable[str], option: str) -> dict[str, str]:
    """``["k=v", ...]`` (a repeatable CLI option such as ``--param``) -> ``{k: v}`` with the spec's rules."""
    values: dict[str, str] = {}
    for item in items:
        key, eq, val = (x.strip() for x in item.partition("="))
        if not eq or not key or not val:
            raise PrunelensError(f"bad {option} {item!r}: expected key=value")
        values[key] = val
    return values


def format_spec(name: str, values: dict[str, Any]) -> str:
    """The inverse of ``parse_spec`` (values in the order given)."""
    return name + (":" + ",".join(f"{k}={v}" for k, v in values.items()) if values else "")


class Parameterized:
    """A named plugin object whose ``params`` are validated on construction and read as attributes."""

    name: ClassVar[str]
    kind: ClassVar[str] = "plugin"  # "method", "task", "ranker": used in error messages
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any):
        unknown = set(values) - set(self.params)
        if unknown:
            known = ", ".join(self.params) or "none"
            raise PrunelensError(f"{self.kind} {self.name!r} has no parameter {', '.join(sorted(unknown))} "
                                 f"(parameters: {known})")
        self.values: dict[str, Any] = {}
        for pname, p in self.params.items():
            v = p.coerce(pname, values.get(pname))
            if p.check is not None and v is not None and (err := p.check(v)):
                raise PrunelensError(f"{self.kind} {self.name!r}: {pname}={v!r}: {err}")
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
        return format_spec(self.name, {k: v for k, v in self.values.items() if v != self.params[k].default})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

"""Units: the things prunelens replaces one at a time (``L3``, ``L3.attn``, ``L3.mlp``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from prunelens.errors import PrunelensError, unknown

KINDS = ("block", "attn", "mlp")
_UNIT_RE = re.compile(r"^L(\d+)(?:\.(attn|mlp))?$")


@dataclass(frozen=True, order=True)
class Unit:
    """One replaceable unit of a decoder: a whole block or one of its sublayers."""

    layer: int
    kind: str  # "block" | "attn" | "mlp"

    @property
    def name(self) -> str:
        return f"L{self.layer}" if self.kind == "block" else f"L{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> Unit:
        m = _UNIT_RE.match(text.strip())
        if not m:
            raise PrunelensError(f"bad unit name {text!r}: expected L<i>, L<i>.attn or L<i>.mlp")
        return cls(int(m.group(1)), m.group(2) or "block")


def all_units(num_layers: int, kinds: Iterable[str] = KINDS) -> list[Unit]:
    """Every unit of the given kinds, ordered by layer then kind."""
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise unknown("unit kind", bad[0], KINDS)
    return [Unit(i, k) for i in range(num_layers) for k in KINDS if k in kinds]


def overlaps(unit: Unit, taken: set[str]) -> bool:
    """The one overlap rule: ``unit`` overlaps the kinds already taken in its layer when it is taken again,
    or when a block meets any of its own sublayers (either way round)."""
    return unit.kind in taken or "block" in taken or (unit.kind == "block" and bool(taken))


def first_overlap(units: Iterable[Unit]) -> tuple[Unit, Unit] | None:
    """The first unit that overlaps an earlier one, with that earlier unit; None when all are disjoint."""
    taken: dict[int, list[Unit]] = {}
    for u in units:
        earlier = taken.setdefault(u.layer, [])
        if overlaps(u, {e.kind for e in earlier}):
            return u, next(e for e in earlier if e.kind == u.kind or "block" in (e.kind, u.kind))
        earlier.append(u)
    return None


def covers_layer(kinds: Iterable[str]) -> bool:
    """Whether units of these kinds cover their whole layer: its block, or both its attention and its MLP
    (so removing both sublayers removes the block)."""
    k = set(kinds)
    return "block" in k or {"attn", "mlp"} <= k


def max_disjoint(units: Iterable[Unit]) -> int:
    """The most of ``units`` that can be taken together: per layer its attention and MLP, or its block."""
    kinds: dict[int, set[str]] = {}
    for u in units:
        kinds.setdefault(u.layer, set()).add(u.kind)
    return sum(max(len(k - {"block"}), 1) for k in kinds.values())


def select_units(spec: str, num_layers: int) -> list[Unit]:
    """Parse ``all``, ``attn``, ``mlp,block``, ``L3,L4.attn`` or ``L0-5.mlp`` into units."""
    out: list[Unit] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":
            out += all_units(num_layers)
        elif part in KINDS:
            out += all_units(num_layers, [part])
        elif m := re.match(r"^L(\d+)-(\d+)(?:\.(attn|mlp))?$", part):
            lo, hi = int(m.group(1)), int(m.group(2))
            out += [Unit(i, m.group(3) or "block") for i in range(lo, hi + 1)]
        else:
            out.append(Unit.parse(part))
    for u in out:
        if not 0 <= u.layer < num_layers:
            raise PrunelensError(f"unit {u} does not exist: the model has layers L0-L{num_layers - 1}")
    if not out:
        raise PrunelensError(f"no units selected by {spec!r}")
    return sorted(set(out))

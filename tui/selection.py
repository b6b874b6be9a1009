"""What the data screens show: method, metric, space, temperature, locality, timing, kind."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prunelens_store import schema
from prunelens_store.view import select_temperature

HEADLINE = ("kl_pred", "kl")  # shown first; every other metric of the store schema follows in schema order
METRICS = HEADLINE + tuple(m for m in schema.METRICS if m not in HEADLINE)
CANDIDATE_METRICS = tuple(m for m in METRICS if m.startswith("cand_"))  # measured only for prompts with candidates
KIND_CHOICES = ("all", "block", "attn", "mlp")
# field -> (key, label) for the one-key switches shared by the data screens
SWITCHES = {
    "method": ("m", "method"), "metric": ("v", "metric"), "space": ("s", "space"),
    "temperature": ("t", "temp"), "locality": ("l", "locality"), "timing": ("g", "timing"),
    "kind": ("k", "kind"),
}


@dataclass(frozen=True)
class Selection:
    method: str
    metric: str = "kl_pred"
    space: str = "probability"
    temperature: float = 1.0
    locality: str = "propagated"
    timing: str = "teacher_forced"
    kind: str = "all"

    def label(self) -> str:
        return (f"{self.method} | {self.metric} | {self.space} | T={self.temperature:g} | "
                f"{self.locality} | {self.timing} | {self.kind}")


def choices(ds: Any, field: str) -> list:
    """The values ``field`` can take in this store."""
    if field == "metric":
        return [m for m in METRICS if m in ds.data_vars and (m not in CANDIDATE_METRICS or has_candidates(ds))]
    if field == "kind":
        present = {str(k) for k in ds["kind"].values}
        return [k for k in KIND_CHOICES if k == "all" or k in present]
    if field == "temperature":
        return [float(t) for t in ds["temperature"].values]
    return [str(v) for v in ds[field].values]


def has_candidates(ds: Any) -> bool:
    """The probe's prompts had answer candidates (the store holds their ids), so ``cand_*`` were measured."""
    return "candidates" in ds.data_vars


def option_label(field: str, value: Any) -> str:
    """How a value is named in a choice box (``all kinds``, ``T=0.7``)."""
    if field == "kind" and value == "all":
        return "all kinds"
    if field == "temperature":
        return f"T={float(value):g}"
    return str(value)


def default_selection(ds: Any) -> Selection:
    """A sensible first view: propagated, teacher-forced predicted KL at the store's default temperature."""

    def pick(field: str, want: str) -> str:
        options = choices(ds, field)
        return want if want in options else options[0]

    return Selection(
        method=choices(ds, "method")[0], metric=pick("metric", "kl_pred"), space=pick("space", "probability"),
        temperature=select_temperature(choices(ds, "temperature")), locality=pick("locality", "propagated"),
        timing=pick("timing", "teacher_forced"), kind="all",
    )


def cycle(sel: Selection, ds: Any, field: str, step: int = 1) -> Selection:
    """``sel`` with ``field`` moved to the next value the store has."""
    options = choices(ds, field)
    current = getattr(sel, field)
    i = options.index(current) if current in options else -1
    return replace(sel, **{field: options[(i + step) % len(options)]})

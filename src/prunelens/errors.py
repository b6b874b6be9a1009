"""The one exception type the CLI turns into a one-line error and a non-zero exit, and the one
"unknown X" message every lookup by name uses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunelensError(Exception):
    """A problem the user can fix: bad input, a missing file, an unsupported model."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``name`` (difflib ratio >= 0.6, case-insensitive), or None."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def unknown_message(kind: str, name: str, available: Iterable[str], hint: str = "") -> str:
    """``unknown method 'wnada'; did you mean wanda? available: magnitude, wanda`` (+ ``hint``).

    ``available`` is listed sorted ("none" when empty); the suggestion is left out when nothing is close."""
    names = sorted(set(available))
    guess = closest(name, names)
    text = f"unknown {kind} {name!r}; "
    if guess is not None:
        text += f"did you mean {guess}? "
    text += f"available: {', '.join(names) or 'none'}"
    return text + (f" {hint}" if hint else "")


def unknown(kind: str, name: str, available: Iterable[str], hint: str = "") -> PrunelensError:
    """The ``PrunelensError`` to raise for an unknown name (see ``unknown_message``)."""
    return PrunelensError(unknown_message(kind, name, available, hint))

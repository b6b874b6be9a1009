"""The probe: replace one unit at a time and measure the perturbation in three spaces.

``engine.ProbeEngine`` (one cell in memory), ``run.run_probe`` (a whole resumable run into a
store), ``metrics`` (the math), ``prompts`` (inputs), ``freerun`` (greedy decoding with a
KV cache), ``capture`` (the cached dense pass), ``distributed`` (ranks). See docs/probe.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProbeEngine", "ProbeSettings", "Prompts", "run_probe"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import torch
    if name in ("ProbeEngine", "ProbeSettings"):
        from . import engine

        return getattr(engine, name)
    if name == "Prompts":
        from .prompts import Prompts

        return Prompts
    if name == "run_probe":
        from .run import run_probe

        return run_probe
    raise AttributeError(name)

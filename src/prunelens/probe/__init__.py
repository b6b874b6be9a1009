"""The probe: replace one unit at a time and measure the perturbation in three spaces.

``engine.ProbeEngine`` (one cell in memory), ``run.run_probe`` (a whole resumable run into a
store), ``metrics`` (the math), ``prompts`` (inputs), ``freerun`` (greedy decoding with a
KV cache), ``capture`` (the cached dense pass), ``distributed`` (ranks), ``vocab_pass`` (the
vocabulary-sized row sums behind the logit metrics; ``vocab_pass_c`` is the same pass in C,
``kernel_cache`` loads only the compiled kernels this user built), ``integrity`` (a method may not
leave the model changed). See docs/probe.md.

May import ``prunelens.compression``, ``prunelens.model``, ``prunelens.text``, ``prunelens_store``
and the base modules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProbeEngine", "ProbeSettings", "Prompts", "run_probe"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import torch
    if name in ("ProbeEngine", "ProbeSettings"):
        from prunelens.probe import engine

        return getattr(engine, name)
    if name == "Prompts":
        from prunelens.probe.prompts import Prompts

        return Prompts
    if name == "run_probe":
        from prunelens.probe.run import run_probe

        return run_probe
    raise AttributeError(name)

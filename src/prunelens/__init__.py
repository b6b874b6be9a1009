"""prunelens: which layers of an LLM can be compressed without breaking generation.

The plugin API is importable from here (``from prunelens import hookimpl, WeightMethod, Param``).
The names load on first use, so ``import prunelens`` and ``prunelens --help`` do not import torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("prunelens")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from prunelens.compression.methods import Method, WeightMethod
    from prunelens.errors import PrunelensError
    from prunelens.evaluation.task_runner import Task
    from prunelens.hookspecs import hookimpl
    from prunelens.model.adapters import Adapter, ArchitectureSpec
    from prunelens.params import Param
    from prunelens.plan.allocation import Allocator, AllocContext
    from prunelens.plan.ranking import RankContext, Ranker
    from prunelens.units import Unit

# public name -> the module that defines it
_API = {
    "hookimpl": "hookspecs",
    "Method": "compression.methods", "WeightMethod": "compression.methods",
    "Param": "params",
    "Unit": "units",
    "Adapter": "model.adapters", "ArchitectureSpec": "model.adapters",
    "Task": "evaluation.task_runner",
    "Ranker": "plan.ranking", "RankContext": "plan.ranking",
    "Allocator": "plan.allocation", "AllocContext": "plan.allocation",
    "PrunelensError": "errors",
}

__all__ = ["AllocContext", "Allocator", "Adapter", "ArchitectureSpec", "Method", "Param", "PrunelensError",
           "RankContext", "Ranker", "Task", "Unit", "WeightMethod", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'prunelens' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

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
    from .adapters import Adapter, ArchitectureSpec
    from .allocation import Allocator, AllocContext
    from .errors import PrunelensError
    from .evaluation import Task
    from .hookspecs import hookimpl
    from .methods import Method, WeightMethod
    from .params import Param
    from .ranking import RankContext, Ranker
    from .units import Unit

# public name -> the module that defines it
_API = {
    "hookimpl": "hookspecs",
    "Method": "methods", "WeightMethod": "methods",
    "Param": "params",
    "Unit": "units",
    "Adapter": "adapters", "ArchitectureSpec": "adapters",
    "Task": "evaluation",
    "Ranker": "ranking", "RankContext": "ranking",
    "Allocator": "allocation", "AllocContext": "allocation",
    "PrunelensError": "errors",
}

__all__ = ["AllocContext", "Allocator", "Adapter", "ArchitectureSpec", "Method", "Param", "PrunelensError", "RankContext",
           "Ranker", "Task", "Unit", "WeightMethod", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'prunelens' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

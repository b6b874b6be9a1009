"""Silence zarr v3's warnings about string dtypes and consolidated metadata."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet() -> Iterator[None]:
    """Within the block, zarr's unstable-spec and consolidation warnings are not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(unstable|consolidated|Consolidated).*")
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
        warnings.filterwarnings("ignore", category=FutureWarning, module="zarr")
        yield

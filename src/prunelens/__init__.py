"""prunelens: which layers of an LLM can be compressed without breaking generation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prunelens")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]

"""The probe store: an xarray Dataset in Zarr v3 (schema, writer with resume, reader)."""

from .reader import open_store

__all__ = ["open_store"]

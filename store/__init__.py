"""The probe store: an xarray Dataset in Zarr v3 (schema, writer with resume, reader)."""

from .reader import decode_attrs, open_store

__all__ = ["decode_attrs", "open_store"]

"""The probe store: an xarray Dataset in Zarr v3 (vocabulary and schema, writer with resume, reader and view)."""

from .reader import decode_attrs, open_store
from .stats import spearman
from .view import StoreView, select_temperature

__all__ = ["StoreView", "decode_attrs", "open_store", "select_temperature", "spearman"]

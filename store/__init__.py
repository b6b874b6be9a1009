"""The probe store: an xarray Dataset in Zarr v3 (schema, writer with resume, reader)."""

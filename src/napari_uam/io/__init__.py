"""Reading H&E patches and writing napari-uam's outputs (tables, GeoJSON, TIFF), atomically."""

from .export import export_cells, output_paths
from .reader import read_image
from .writers import write_cells_csv, write_cells_parquet, write_geojson, write_labels_tiff

__all__ = [
    "export_cells",
    "output_paths",
    "read_image",
    "write_cells_csv",
    "write_cells_parquet",
    "write_geojson",
    "write_labels_tiff",
]

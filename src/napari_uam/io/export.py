"""One call that writes every per-image output with the file names the CLI promises.

Per image ``<stem>``, in ``out_dir``:
``<stem>_nuclei.tif`` (labels, image height and width), ``<stem>_cells.csv`` (one row per
label: ``label,y,x,area_um2,class,tumor_probability`` then features), ``<stem>_cells.parquet``,
``<stem>_cells.geojson`` and ``<stem>_tumor_mask.tif`` when a tumor mask exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from .writers import write_cells_csv, write_cells_parquet, write_geojson, write_labels_tiff

FORMATS = ("tif", "csv", "parquet", "geojson")


def output_paths(out_dir, stem: str) -> dict[str, Path]:
    """The output file of each kind for one image."""
    d = Path(out_dir)
    return {
        "tif": d / f"{stem}_nuclei.tif",
        "csv": d / f"{stem}_cells.csv",
        "parquet": d / f"{stem}_cells.parquet",
        "geojson": d / f"{stem}_cells.geojson",
        "tumor_mask": d / f"{stem}_tumor_mask.tif",
    }


def export_cells(
    labels: np.ndarray,
    table: pd.DataFrame,
    out_dir,
    stem: str,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
    tumor_mask: Optional[np.ndarray] = None,
    provenance: Optional[dict] = None,
    mpp: Optional[float] = None,
) -> dict[str, Path]:
    """Write the chosen outputs of one image; nothing is written if any target exists.

    Args:
        labels: (H, W) nuclei labels.
        table: the cell table (one row per label).
        out_dir: output folder (created if missing).
        stem: file name stem, usually the image's.
        formats: subset of ``("tif", "csv", "parquet", "geojson")``.
        overwrite: replace existing files (each replacement is atomic).
        tumor_mask: optional (H, W) tumor-region mask, written as ``<stem>_tumor_mask.tif``.
        provenance: stored in the parquet metadata.
        mpp: pixel size stored in the TIFF resolution tags.

    Returns:
        The written paths by kind.
    """
    formats = tuple(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"Unknown export format(s) {sorted(unknown)}; choose from {FORMATS}.")
    paths = output_paths(out_dir, stem)
    wanted = list(formats) + (["tumor_mask"] if tumor_mask is not None else [])
    if not overwrite:
        existing = [str(paths[k]) for k in wanted if paths[k].exists()]
        if existing:
            raise FileExistsError(
                f"Not overwriting existing output(s): {', '.join(existing)}. "
                "Choose another folder or allow overwriting."
            )
    written: dict[str, Path] = {}
    if "tif" in formats:
        written["tif"] = write_labels_tiff(labels, paths["tif"], overwrite=True, mpp=mpp)
    if "csv" in formats:
        written["csv"] = write_cells_csv(table, paths["csv"], overwrite=True)
    if "parquet" in formats:
        written["parquet"] = write_cells_parquet(table, paths["parquet"], provenance, overwrite=True)
    if "geojson" in formats:
        written["geojson"] = write_geojson(labels, table, paths["geojson"], overwrite=True)
    if tumor_mask is not None:
        written["tumor_mask"] = write_labels_tiff(
            (np.asarray(tumor_mask) > 0).astype(np.uint8), paths["tumor_mask"], overwrite=True, mpp=mpp
        )
    return written

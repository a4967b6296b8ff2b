"""One call that writes every per-image output with the file names the CLI promises.

Per image ``<stem>``, in ``out_dir``:
``<stem>_nuclei.tif`` (labels, image height and width), ``<stem>_cells.csv`` (one row per
label: ``label,y,x,area_um2,class,tumor_probability`` then features), ``<stem>_cells.parquet``,
``<stem>_cells.geojson`` (QuPath detections with the cells' measurements), on request
``<stem>_cells.h5ad`` (AnnData) and ``<stem>_nuclei.ome.zarr`` (an OME-Zarr label image; both
:mod:`napari_uam.io.interop`) and, when a tumor mask exists, ``<stem>_tumor_mask.tif`` (uint8, 1 =
tumor) and ``<stem>_tumor.geojson`` (the region as QuPath annotations of class Tumor, holes
kept, image pixels: :mod:`napari_uam.io.regions`).
"""

from __future__ import annotations

import shutil
import tempfile
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from .atomic import move_into_place, remove_output
from .interop import check_available, write_cells_h5ad, write_labels_ome_zarr
from .regions import write_tumor_geojson
from .writers import (
    DEFAULT_GEOJSON_MEASUREMENTS,
    check_geojson_measurements,
    write_cells_csv,
    write_cells_parquet,
    write_geojson,
    write_labels_tiff,
)

#: Every output kind; ``h5ad`` and ``zarr`` need the ``export`` extra (anndata, ome-zarr).
FORMATS = ("tif", "csv", "parquet", "geojson", "h5ad", "zarr")
#: What the command line and the dock write unless told otherwise.
DEFAULT_FORMATS = ("tif", "csv", "parquet", "geojson")
#: Outputs written whenever a tumor mask exists (whatever the formats).
TUMOR_OUTPUTS = ("tumor_mask", "tumor_geojson")


def output_stem(name: str) -> str:
    """File-name stem of an image's outputs, from its file name (or any name).

    The file name without its image suffix (``.ome.tif``/``.ome.tiff`` counted as one suffix),
    with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``. Dots
    inside the name are kept, so ``slide_0.986.jpg`` gives ``slide_0.986``. Used by the command
    line and the napari dock alike, so both name an image's outputs the same way.
    """
    name = re.split(r"[\\/]", str(name).strip())[-1]
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = name.rsplit(".", 1)[0] if "." in name else name
    return safe_stem(name)


def safe_stem(text: str) -> str:
    """``text`` as a file-name stem: other characters than letters, digits, ``._-`` become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return stem or "image"


def output_paths(out_dir, stem: str) -> dict[str, Path]:
    """The output file of each kind for one image."""
    d = Path(out_dir)
    return {
        "tif": d / f"{stem}_nuclei.tif",
        "csv": d / f"{stem}_cells.csv",
        "parquet": d / f"{stem}_cells.parquet",
        "geojson": d / f"{stem}_cells.geojson",
        "h5ad": d / f"{stem}_cells.h5ad",
        "zarr": d / f"{stem}_nuclei.ome.zarr",
        "tumor_mask": d / f"{stem}_tumor_mask.tif",
        "tumor_geojson": d / f"{stem}_tumor.geojson",
    }


def export_cells(
    labels: np.ndarray,
    table: pd.DataFrame,
    out_dir,
    stem: str,
    formats: Iterable[str] = DEFAULT_FORMATS,
    overwrite: bool = False,
    tumor_mask: Optional[np.ndarray] = None,
    provenance: Optional[dict] = None,
    mpp: Optional[float] = None,
    geojson_measurements: str = DEFAULT_GEOJSON_MEASUREMENTS,
    origin: tuple = (0, 0),
) -> dict[str, Path]:
    """Write the chosen outputs of one image, all or none.

    Nothing is written if any target exists (unless ``overwrite``). If any write fails (full
    disk, error, crash), the output folder is left as it was: the outputs are staged in a
    hidden folder inside ``out_dir`` and only renamed into place once every one is complete.

    Args:
        labels: (H, W) nuclei labels.
        table: the cell table (one row per label).
        out_dir: output folder (created if missing).
        stem: file name stem, usually the image's.
        formats: subset of :data:`FORMATS` (default :data:`DEFAULT_FORMATS`).
        overwrite: replace existing files (each replacement is atomic).
        tumor_mask: optional (H, W) tumor-region mask, written as ``<stem>_tumor_mask.tif`` and
            as QuPath annotations ``<stem>_tumor.geojson``.
        provenance: stored in the parquet metadata.
        mpp: pixel size stored in the TIFF resolution tags (and the OME-Zarr / AnnData scale).
        geojson_measurements: what each nucleus' GeoJSON ``measurements`` hold
            (:data:`napari_uam.io.writers.GEOJSON_MEASUREMENTS`).
        origin: (y, x) where ``labels``' pixel (0, 0) lies on the whole image (a slide's view
            or a drawn area in the dock): the tables' ``y, x`` and the GeoJSON polygons are
            then in the whole image's pixels, so that QuPath places them on the slide; the
            label images stay the region's (its offset is in ``provenance``).

    Returns:
        The written paths by kind.
    """
    formats = tuple(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"Unknown export format(s) {sorted(unknown)}; choose from {FORMATS}.")
    check_geojson_measurements(geojson_measurements)
    check_available(formats)
    paths = output_paths(out_dir, stem)
    wanted = list(formats) + (list(TUMOR_OUTPUTS) if tumor_mask is not None else [])
    if not overwrite:
        existing = [str(paths[k]) for k in wanted if paths[k].exists()]
        if existing:
            raise FileExistsError(
                f"Not overwriting existing output(s): {', '.join(existing)}. "
                "Choose another folder or allow overwriting."
            )
    # Every output is first written into a hidden staging folder beside the targets (same file
    # system, so the final moves are renames). A write that fails (full disk, bad table, crash)
    # then leaves the output folder exactly as it was: no new file, no replaced file.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    oy, ox = (float(v) for v in origin)
    if (oy or ox) and {"y", "x"} <= set(table.columns):
        table = table.copy()
        table["y"] = table["y"] + oy
        table["x"] = table["x"] + ox
    stage = Path(tempfile.mkdtemp(prefix=f".{stem}.export.", dir=out))
    try:
        staged = {k: stage / paths[k].name for k in wanted}
        if "tif" in formats:
            write_labels_tiff(labels, staged["tif"], mpp=mpp)
        if "csv" in formats:
            write_cells_csv(table, staged["csv"])
        if "parquet" in formats:
            write_cells_parquet(table, staged["parquet"], provenance)
        if "geojson" in formats:
            write_geojson(labels, table, staged["geojson"], measurements=geojson_measurements, origin=(oy, ox))
        if "h5ad" in formats:
            write_cells_h5ad(table, staged["h5ad"], provenance, mpp)
        if "zarr" in formats:
            write_labels_ome_zarr(labels, staged["zarr"], mpp=mpp)
        if tumor_mask is not None:
            write_labels_tiff((np.asarray(tumor_mask) > 0).astype(np.uint8), staged["tumor_mask"], mpp=mpp)
            write_tumor_geojson(tumor_mask, staged["tumor_geojson"], mpp=mpp)
        written: dict[str, Path] = {}
        try:
            for kind in wanted:
                move_into_place(staged[kind], paths[kind])
                written[kind] = paths[kind]
        except BaseException:
            # A rename failing midway: files that did not exist before this call are removed
            # again; files that replaced a previous version are complete and stay.
            if not overwrite:
                for path in written.values():
                    remove_output(path)
            raise
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)

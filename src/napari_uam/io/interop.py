"""Outputs for the scverse and OME ecosystems: the cell table as AnnData (``.h5ad``, what scanpy
and squidpy read), the nuclei labels as an OME-Zarr label image (``.ome.zarr``, NGFF, what
napari-ome-zarr, vizarr and QuPath's OME-Zarr reader open).

Both libraries are optional (``pip install 'napari-uam[export]'``); asking for one of these
formats without them is refused before any image is processed (:func:`check_available`).

AnnData layout (squidpy's conventions): one observation per nucleus, named by its label;
``X`` the radiomics features (float32, one variable per feature column); ``obs`` the per-cell
columns (:data:`CELL_COLUMNS`: label, centroid, area, class, tumor probability, image);
``obsm["spatial"]`` the centroids as (x, y) in pixels of the image, ``uns["spatial_mpp"]`` the
micrometres per pixel, ``uns["napari_uam"]`` the provenance as JSON text (h5ad stores no None).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import MissingDependencyError
from .atomic import atomic_path, move_into_place, remove_output

#: Per-cell columns that are observations' annotations, not features.
CELL_COLUMNS = ("image", "label", "y", "x", "area_um2", "class", "tumor_probability")
#: Format -> the modules it needs, for the install hint.
NEEDS = {"h5ad": ("anndata",), "zarr": ("zarr", "ome_zarr")}
INSTALL_HINT = "pip install 'napari-uam[export]'"
#: Labels pyramid: halve until the smallest level is at most this many pixels on a side.
PYRAMID_MIN_SIDE = 1024
CHUNK = 1024


def check_available(formats) -> None:
    """Raise :class:`MissingDependencyError` (one actionable line) when a requested format's
    library is missing, before anything is computed or written."""
    for fmt in formats:
        missing = [m for m in NEEDS.get(fmt, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependencyError(
                f"The {fmt!r} output needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}."
            )


def cells_anndata(table: pd.DataFrame, provenance: Optional[dict] = None, mpp: Optional[float] = None):
    """The cell table as an :class:`anndata.AnnData` (layout in the module docstring)."""
    import anndata  # heavy and optional

    obs_cols = [c for c in table.columns if c in CELL_COLUMNS or table[c].dtype.kind not in "biuf"]
    features = [c for c in table.columns if c not in set(obs_cols)]
    obs = table[obs_cols].copy()
    for col in obs_cols:
        if obs[col].dtype.kind not in "biuf":
            # Text as categoricals of plain Python strings (missing classes stay missing):
            # pandas 3's string arrays are refused by anndata's writer by default.
            values = obs[col].astype(object)
            cats = pd.Index(sorted({v for v in values if isinstance(v, str)}), dtype=object)
            obs[col] = pd.Categorical(values.where(values.isin(cats)), categories=cats)
    names = table["label"].astype(np.int64).astype(str) if "label" in table.columns else table.index.astype(str)
    obs.index = pd.Index(list(names), name="cell", dtype=object)
    adata = anndata.AnnData(
        X=table[features].to_numpy(np.float32) if features else np.zeros((len(table), 0), np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([str(c) for c in features], name="feature", dtype=object)),
    )
    if {"x", "y"} <= set(table.columns):
        adata.obsm["spatial"] = table[["x", "y"]].to_numpy(np.float64)
    if mpp:
        adata.uns["spatial_mpp"] = float(mpp)
    adata.uns["napari_uam"] = json.dumps(provenance or {}, default=str)
    return adata


def write_cells_h5ad(
    table: pd.DataFrame, path, provenance: Optional[dict] = None, mpp: Optional[float] = None, overwrite: bool = False
) -> Path:
    """Write the cell table as AnnData (``anndata.read_h5ad`` reads it back)."""
    adata = cells_anndata(table, provenance, mpp)
    with atomic_path(path, overwrite) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def labels_pyramid(labels) -> list:
    """Full resolution, then every second pixel (nearest: ids stay ids) until the smallest side
    is at most :data:`PYRAMID_MIN_SIDE`. Works on NumPy and Dask arrays alike."""
    levels = [labels]
    while min(levels[-1].shape) > PYRAMID_MIN_SIDE:
        levels.append(levels[-1][::2, ::2])
    return levels


def write_labels_ome_zarr(labels, path, mpp: Optional[float] = None, overwrite: bool = False) -> Path:
    """Write nuclei labels as an OME-Zarr (NGFF) label image: a multiscale pyramid at the root
    with ``image-label`` metadata, axes y, x in micrometres when ``mpp`` is known.

    ``labels`` may be a Dask array (a slide's labels, read back lazily from its tiled TIFF). The
    store is written beside the target and renamed into place when complete
    (:func:`.atomic.move_into_place`); an existing one is replaced only with ``overwrite``.
    """
    import zarr  # heavy and optional
    from ome_zarr.writer import write_multiscale

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Not overwriting existing output: {path}.")
    tmp = path.with_name(f".{path.name}.partial")
    remove_output(tmp)
    levels = labels_pyramid(labels)
    unit = {"unit": "micrometer"} if mpp else {}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    step = float(mpp) if mpp else 1.0
    transforms = [[{"type": "scale", "scale": [step * 2**i, step * 2**i]}] for i in range(len(levels))]
    try:
        root = zarr.open_group(str(tmp), mode="w")
        write_multiscale(
            levels,
            root,
            name="nuclei",
            axes=axes,
            coordinate_transformations=transforms,
            storage_options={"chunks": (CHUNK, CHUNK)},
        )
        ome = dict(root.attrs["ome"])
        ome["image-label"] = {"version": ome.get("version", "0.5")}
        root.attrs["ome"] = ome
        move_into_place(tmp, path)
    finally:
        remove_output(tmp)
    return path


__all__ = [
    "CELL_COLUMNS",
    "cells_anndata",
    "check_available",
    "labels_pyramid",
    "write_cells_h5ad",
    "write_labels_ome_zarr",
]

"""Writers for napari-uam outputs. Every writer is atomic (see :mod:`.atomic`).

- cell tables: CSV and parquet (provenance in the parquet schema metadata),
- nuclei: GeoJSON FeatureCollection of polygons that QuPath imports as detections with
  their classification,
- labels / masks: TIFF (uint16 when the ids fit, else uint32; zlib compressed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi
from skimage.measure import find_contours

from .atomic import atomic_path

#: QuPath colours (RGB) per class name; unknown classes get grey.
CLASS_COLOURS = {"tumor": (0, 200, 0), "non-tumor": (70, 110, 255)}


#: First characters that make a spreadsheet (Excel, LibreOffice, Sheets) read a cell as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with text cells that a spreadsheet would run as a formula prefixed by ``'``.

    Class names come from the checkpoint, i.e. from whoever trained it: a name such as
    ``=HYPERLINK(...)`` would otherwise be evaluated when a pathologist opens the CSV in a
    spreadsheet (CSV injection). The leading quote makes it display as plain text. Numbers
    are untouched (a negative number is not text), and so is parquet, which has types.
    Returns ``table`` itself when no cell needs it.
    """
    out = table
    for col in table.columns:
        values = table[col]
        if values.dtype.kind not in "OSU" and not isinstance(values.dtype, (pd.CategoricalDtype, pd.StringDtype)):
            continue
        text = values.astype(object)
        risky = text.map(lambda v: isinstance(v, str) and v.startswith(_FORMULA_START))
        if risky.any():
            if out is table:
                out = table.copy()
            out[col] = text.where(~risky, "'" + text[risky].astype(str))
    return out


#: How a float is written to CSV (9 significant digits: float32 round-trips, tables stay small).
CSV_FLOAT = "%.9g"
#: Characters that make the csv module quote a field; a table holding one goes through pandas.
_CSV_QUOTED = (",", '"', "\n", "\r")


def csv_text(table: pd.DataFrame, header: bool = True) -> Optional[str]:
    """The bytes ``table.to_csv(index=False, float_format=CSV_FLOAT, header=header)`` writes,
    built column by column, or None when the table holds something only pandas writes right.

    pandas formats every float through a Python call per value; on a slide's table (88,000
    cells x hundreds of features) that was a quarter of the whole run (docs/performance.md,
    ``wsi``). Here each column is formatted in one ``map`` and rows are joined as strings.
    Only plain columns take this path: floats (NaN written empty, as pandas), integers, bools
    and text needing no quotes; anything else (categoricals, text with a comma or a quote,
    a one-column table, odd header names) returns None and is written by pandas.
    """
    names = [str(c) for c in table.columns]
    if len(names) < 2 or any(ch in n for n in names for ch in _CSV_QUOTED):
        return None
    columns = []
    for col in table.columns:
        values = table[col].to_numpy()
        kind = values.dtype.kind
        if kind == "f":
            text = list(map(CSV_FLOAT.__mod__, values.tolist()))
            for i in np.flatnonzero(np.isnan(values)):
                text[i] = ""
        elif kind in "iub":
            text = list(map(str, values.tolist()))
        elif kind == "O" and all(type(v) is str for v in values):
            text = list(values)
            if any(ch in v for v in text for ch in _CSV_QUOTED):
                return None
        else:
            return None
        columns.append(text)
    rows = list(map(",".join, zip(*columns)))
    if header:
        rows.insert(0, ",".join(names))
    return "".join(row + os.linesep for row in rows)


def write_csv_part(table: pd.DataFrame, fh, header: bool = True) -> None:
    """Append ``table`` to the open text file ``fh`` as CSV (formulas neutralised)."""
    safe = csv_safe(table)
    text = csv_text(safe, header=header)
    if text is None:
        safe.to_csv(fh, header=header, index=False, float_format=CSV_FLOAT)
    else:
        fh.write(text)


def write_cells_csv(table: pd.DataFrame, path, overwrite: bool = False) -> Path:
    """Write a cell table to CSV (one row per nucleus), atomically; formulas are neutralised."""
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "w", newline="") as fh:  # the line ends are os.linesep, as pandas writes them
            write_csv_part(table, fh)
    return Path(path)


def write_cells_parquet(table: pd.DataFrame, path, provenance: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write a cell table to parquet with ``provenance`` in the file metadata, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tab = pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    meta = dict(tab.schema.metadata or {})
    extra = {"attrs": {k: v for k, v in table.attrs.items() if isinstance(v, (str, int, float))}}
    if provenance:
        extra["provenance"] = provenance
    meta[b"napari_uam"] = json.dumps(extra, default=str).encode()
    tab = tab.replace_schema_metadata(meta)
    with atomic_path(path, overwrite) as tmp:
        pq.write_table(tab, tmp)
    return Path(path)


def write_labels_tiff(labels: np.ndarray, path, overwrite: bool = False, mpp: Optional[float] = None) -> Path:
    """Write an (H, W) label image or mask to TIFF, atomically.

    The smallest unsigned integer type holding the ids is used (uint8 for masks, uint16 for
    most label images) so that ImageJ/QuPath open it; ``mpp`` is stored as resolution in cm.
    """
    arr = np.asarray(labels)
    top = int(arr.max()) if arr.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, arr.astype(dtype), compression="zlib", **kwargs)
    return Path(path)


def write_labels_tiff_hook(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers (TIFF)."""
    mpp = (meta.get("metadata") or {}).get("mpp")
    write_labels_tiff(np.asarray(data), path, overwrite=True, mpp=mpp)
    return [path]


def label_polygons(labels: np.ndarray) -> dict[int, list[list[float]]]:
    """Outer boundary of every label as a closed ring of (x, y) pixel coordinates.

    Boundaries run along pixel edges' midpoints (marching squares at level 0.5 on each
    nucleus mask), so a polygon encloses its pixel centres; the longest contour is kept
    when a nucleus has holes or several parts.
    """
    out: dict[int, list[list[float]]] = {}
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = np.pad(labels[sl] == idx, 1).astype(np.float32)
        contours = find_contours(mask, 0.5)
        if not contours:
            continue
        c = max(contours, key=len)
        y0, x0 = sl[0].start - 1, sl[1].start - 1
        ring = np.stack([c[:, 1] + x0, c[:, 0] + y0], axis=1).tolist()
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        if len(ring) < 4:  # a valid GeoJSON ring needs 4 positions
            cy, cx = c.mean(axis=0)
            cx, cy = cx + x0, cy + y0
            ring = [[cx - 0.5, cy - 0.5], [cx + 0.5, cy - 0.5], [cx + 0.5, cy + 0.5], [cx - 0.5, cy - 0.5]]
        out[idx] = ring
    return out


#: What a nucleus' GeoJSON ``measurements`` hold: ``all`` numeric columns of the cell table (the
#: full measurement set QuPath shows in its measurement table), a ``summary`` (position, area,
#: tumor probability), or ``none`` but the label that joins the polygon to the table.
GEOJSON_MEASUREMENTS = ("all", "summary", "none")
DEFAULT_GEOJSON_MEASUREMENTS = "all"
SUMMARY_MEASUREMENTS = ("label", "y", "x", "area_um2", "tumor_probability")


def check_geojson_measurements(which: str) -> str:
    if which not in GEOJSON_MEASUREMENTS:
        raise ValueError(f"GeoJSON measurements must be one of {GEOJSON_MEASUREMENTS}, not {which!r}.")
    return which


def measurement_columns(table: pd.DataFrame, which: str = DEFAULT_GEOJSON_MEASUREMENTS) -> list[str]:
    """The numeric columns of ``table`` a nucleus' ``measurements`` hold (``label`` first)."""
    check_geojson_measurements(which)
    if which == "none":
        return ["label"]
    if which == "summary":
        cols = [c for c in SUMMARY_MEASUREMENTS if c in table.columns]
    else:
        numeric = [c for c in table.columns if table[c].dtype.kind in "biuf"]
        cols = ["label", *[c for c in numeric if c != "label"]]
    return ["label", *[c for c in cols if c != "label"]]


def detection_properties(
    table: pd.DataFrame, which: str = DEFAULT_GEOJSON_MEASUREMENTS, label_offset: int = 0
) -> dict[int, str]:
    """The GeoJSON ``properties`` text of every cell of ``table``, by its (local) label.

    QuPath's detection fields: ``objectType``, ``classification {name, color}`` (when the
    table has classes) and ``measurements``, a map of name to number at float32 precision (QuPath
    keeps measurements as float32; the shortest text that reads back as the same float32), a
    NaN left out (JSON has none). Built as text, column by column through Arrow's float
    formatting: a dict per cell through ``json.dumps`` cost more than the polygons on a slide.
    ``label_offset`` turns a tile's local labels into the image's (the ``label`` measurement).
    """
    import pyarrow as pa  # heavy: napari imports this module for its labels writer
    import pyarrow.compute as pc

    if not len(table) or "label" not in table.columns:
        return {}
    labels = table["label"].to_numpy(np.int64)
    cols = [c for c in measurement_columns(table, which) if c != "label"]
    n = len(table)
    texts = [f'"label": {g}' for g in (labels + int(label_offset)).tolist()]
    if cols:
        cells = np.empty((n, len(cols)), dtype=object)
        finite = np.empty((n, len(cols)), dtype=bool)
        for j, col in enumerate(cols):
            values = table[col].to_numpy(np.float32)
            finite[:, j] = np.isfinite(values)
            numbers = pc.cast(pa.array(values), pa.string()).to_numpy(zero_copy_only=False)
            cells[:, j] = (json.dumps(str(col)) + ": ") + numbers
        full = finite.all(axis=1)
        for i in range(n):
            texts[i] += ", " + ", ".join(cells[i] if full[i] else cells[i][finite[i]])
    classes = table["class"].tolist() if "class" in table.columns else [None] * n
    out = {}
    for lab, text, name in zip(labels.tolist(), texts, classes):
        cls = ""
        if isinstance(name, str):
            colour = list(CLASS_COLOURS.get(name, (128, 128, 128)))
            cls = f', "classification": {{"name": {json.dumps(name)}, "color": {json.dumps(colour)}}}'
        out[lab] = f'{{"objectType": "detection", "isLocked": false{cls}, "measurements": {{{text}}}}}'
    return out


def detection_feature(label: int, ring, properties: Optional[str]) -> str:
    """One nucleus as GeoJSON Feature text (``properties`` from :func:`detection_properties`;
    None for a polygon without a table row: the label only)."""
    if properties is None:
        properties = f'{{"objectType": "detection", "isLocked": false, "measurements": {{"label": {int(label)}}}}}'
    return (
        f'{{"type": "Feature", "id": "nucleus-{int(label)}", "geometry": {{"type": "Polygon", '
        f'"coordinates": [{json.dumps(ring)}]}}, "properties": {properties}}}'
    )


FEATURE_COLLECTION_START = '{"type": "FeatureCollection", "features": ['
FEATURE_COLLECTION_END = "]}"


def geojson_text(
    labels: np.ndarray,
    table: pd.DataFrame,
    measurements: str = DEFAULT_GEOJSON_MEASUREMENTS,
    origin: tuple = (0, 0),
) -> str:
    """A GeoJSON FeatureCollection of nuclei polygons in QuPath's detection format; ``origin``
    (y, x): where the labels' pixel (0, 0) lies on the whole image, added to the polygons."""
    props = detection_properties(table, measurements)
    oy, ox = (float(v) for v in origin)
    polys = label_polygons(labels)
    if oy or ox:
        polys = {lab: [[x + ox, y + oy] for x, y in ring] for lab, ring in polys.items()}
    feats = (detection_feature(lab, ring, props.get(lab)) for lab, ring in polys.items())
    return FEATURE_COLLECTION_START + ", ".join(feats) + FEATURE_COLLECTION_END


def write_geojson(
    labels: np.ndarray,
    table: pd.DataFrame,
    path,
    overwrite: bool = False,
    measurements: str = DEFAULT_GEOJSON_MEASUREMENTS,
    origin: tuple = (0, 0),
) -> Path:
    """Write nuclei polygons with their class and measurements to GeoJSON (QuPath: File >
    Import objects); ``measurements``: one of :data:`GEOJSON_MEASUREMENTS`; ``origin``: see
    :func:`geojson_text`."""
    text = geojson_text(np.asarray(labels), table, check_geojson_measurements(measurements), origin)
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
    return Path(path)

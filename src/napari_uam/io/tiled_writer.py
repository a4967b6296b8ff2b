"""Writing a tiled image's results as the tiles finish: the labels as a tiled (Big)TIFF, the cell
table as parquet row groups and CSV, cells as GeoJSON, from the per-tile parts of
:mod:`napari_uam.tiling`."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tifffile

from .interop import write_cells_h5ad, write_labels_ome_zarr
from .writers import (
    DEFAULT_GEOJSON_MEASUREMENTS,
    FEATURE_COLLECTION_END,
    FEATURE_COLLECTION_START,
    detection_feature,
    detection_properties,
    write_csv_part,
)


def _load_kept(parts: Path, i: int, tile) -> np.ndarray:  # tile: a tiling.Tile (its .ext)
    meta = json.loads((parts / f"{i}.json").read_text())
    y0, y1, x0, x1 = tile.ext
    raw = zlib.decompress((parts / f"{i}.lab").read_bytes())
    return np.frombuffer(raw, meta["dtype"]).reshape(y1 - y0, x1 - x0)


#: Reduced levels stored with a slide's labels (SubIFDs, every f-th pixel: ids stay ids), so
#: that napari shows them as a multiscale layer without reading level 0 whole; a level is kept
#: while its shorter side is at least :data:`MIN_LEVEL_SIDE`.
LEVEL_FACTORS = (4, 16, 64, 256)
MIN_LEVEL_SIDE = 256


def level_factors(height: int, width: int) -> list[int]:
    return [f for f in LEVEL_FACTORS if min(height, width) // f >= MIN_LEVEL_SIDE]


def _write_labels(path, tiles, parts, offsets, height, width, tile, n_cells, mpp) -> int:
    """Write the global labels as a tiled BigTIFF, one output tile at a time, with reduced
    levels as SubIFDs (:func:`level_factors`; filled from the same tiles as they pass, in memory
    at 1/16 of the pixels and less).

    Returns:
        Pixels claimed by two kept nuclei of different tiles (0 when the halo suffices; the
        first tile in row-major order keeps such a pixel).
    """
    gy = max(t.iy for t in tiles) + 1
    gx = max(t.ix for t in tiles) + 1
    dtype = np.uint16 if n_cells < 65536 else np.uint32
    cache: dict[int, np.ndarray] = {}
    conflicts = [0]

    def kept(i):
        if i not in cache:
            if len(cache) >= 9:
                cache.pop(next(iter(cache)))
            cache[i] = _load_kept(parts, i, tiles[i])
        return cache[i]

    def blocks():
        for iy in range(gy):
            for ix in range(gx):
                y0, x0 = iy * tile, ix * tile
                out = np.zeros((tile, tile), dtype)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        jy, jx = iy + dy, ix + dx
                        if not (0 <= jy < gy and 0 <= jx < gx):
                            continue
                        j = jy * gx + jx
                        if offsets[j + 1] == offsets[j]:
                            continue
                        t = tiles[j]
                        Y0, Y1, X0, X1 = t.ext
                        a0, a1 = max(Y0, y0), min(Y1, y0 + tile, height)
                        b0, b1 = max(X0, x0), min(X1, x0 + tile, width)
                        if a0 >= a1 or b0 >= b1:
                            continue
                        sub = kept(j)[a0 - Y0 : a1 - Y0, b0 - X0 : b1 - X0]
                        dst = out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0]
                        m = sub > 0
                        clash = m & (dst > 0)
                        conflicts[0] += int(clash.sum())
                        put = m & ~clash
                        dst[put] = (sub[put].astype(np.int64) + offsets[j]).astype(dtype)
                for f, level in levels.items():
                    # Level pixel (r, c) is level-0 pixel (r * f, c * f).
                    ry, rx = -(-y0 // f), -(-x0 // f)
                    part = out[ry * f - y0 :: f, rx * f - x0 :: f]
                    h = min(part.shape[0], level.shape[0] - ry)
                    w = min(part.shape[1], level.shape[1] - rx)
                    if h > 0 and w > 0:
                        level[ry : ry + h, rx : rx + w] = part[:h, :w]
                yield out

    levels = {f: np.zeros((-(-height // f), -(-width // f)), dtype) for f in level_factors(height, width)}
    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(blocks(), shape=(height, width), dtype=dtype, tile=(tile, tile), compression="zlib",
                 subifds=len(levels) or None, **kwargs)  # fmt: skip
        for level in levels.values():  # filled while level 0 was written
            side = min(tile, 1024)
            tw.write(level, tile=(side, side), compression="zlib", subfiletype=1)
    return conflicts[0]


def _write_tables(targets, formats, tiles, parts, offsets, prov, written) -> Optional[int]:
    """Stream the per-tile tables into the CSV and parquet outputs with global label ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    csv = open(targets["csv"], "w", newline="") if "csv" in formats else None
    n_tumor = None
    frames = [] if "h5ad" in formats else None  # AnnData holds the whole table in memory
    try:
        for i in range(len(tiles)):
            p = parts / f"{i}.parquet"
            if not p.is_file():
                continue
            df = pd.read_parquet(p)
            df["label"] = df["label"].astype(np.int64) + int(offsets[i])
            attrs = json.loads((parts / f"{i}.json").read_text())["attrs"]
            if "class" in df.columns:
                tumor = attrs.get("tumor_class", "tumor")
                n_tumor = (n_tumor or 0) + int((df["class"] == tumor).sum())
            if csv is not None:
                # As write_cells_csv: class names from the checkpoint never run as formulas.
                write_csv_part(df, csv, header=csv.tell() == 0)
            if "parquet" in formats:
                tab = pa.Table.from_pandas(df, preserve_index=False)
                if writer is None:
                    # Text as `string`, as the one-piece writer stores it: pandas 3 reads the
                    # parts' text back as `large_string`, which would make the file depend on it.
                    schema = pa.schema(
                        [f.with_type(pa.string()) if f.type == pa.large_string() else f for f in tab.schema],
                        metadata=tab.schema.metadata,
                    )
                    extra = {"attrs": attrs, "provenance": prov}
                    meta = dict(schema.metadata or {})
                    meta[b"napari_uam"] = json.dumps(extra, default=str).encode()
                    schema = schema.with_metadata(meta)
                    writer = pq.ParquetWriter(targets["parquet"], schema)
                writer.write_table(tab.cast(writer.schema))
            if frames is not None:
                frames.append(df)
    finally:
        if writer is not None:
            writer.close()
        if csv is not None:
            csv.close()
    if "parquet" in formats:
        written["parquet"] = targets["parquet"]
    if csv is not None:
        written["csv"] = targets["csv"]
    if frames is not None:
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"label": []})
        write_cells_h5ad(table, targets["h5ad"], prov, prov.get("mpp"))
        written["h5ad"] = targets["h5ad"]
    return n_tumor


def _write_zarr_labels(labels_tif, path, mpp) -> None:
    """The labels TIFF as an OME-Zarr label image, read tile by tile through Dask."""
    import dask.array as da  # heavy

    with tifffile.TiffFile(labels_tif) as tif:
        store = tif.series[0].aszarr(level=0)  # the file also holds reduced levels (SubIFDs)
        try:
            write_labels_ome_zarr(da.from_zarr(store), path, mpp=mpp)
        finally:
            store.close()


def _write_geojson(path, tiles, parts, offsets, measurements: str = DEFAULT_GEOJSON_MEASUREMENTS) -> None:
    """Stream the nuclei polygons (QuPath detections) of every tile into one GeoJSON file, with
    the same feature text as the one-piece writer (:func:`.writers.detection_properties`)."""
    with open(path, "w") as fh:
        fh.write(FEATURE_COLLECTION_START)
        first = True
        for i in range(len(tiles)):
            rp = parts / f"{i}.rings.json"
            if not rp.is_file():
                continue
            rings = json.loads(rp.read_text())
            tp = parts / f"{i}.parquet"
            offset = int(offsets[i])
            props = detection_properties(pd.read_parquet(tp), measurements, offset) if tp.is_file() else {}
            for key, ring in rings.items():
                lab = int(key)
                fh.write(("" if first else ", ") + detection_feature(lab + offset, ring, props.get(lab)))
                first = False
        fh.write(FEATURE_COLLECTION_END)

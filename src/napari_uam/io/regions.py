"""The tumor region as QuPath annotations (GeoJSON) and its area.

QuPath (File > Import objects) reads a GeoJSON FeatureCollection; a feature whose
``properties.objectType`` is ``"annotation"`` becomes an annotation, with the class named in
``properties.classification``. Each 4-connected part of the mask becomes one Polygon
feature: its outer boundary first, then one ring per hole (so stroma or lumen enclosed by
tumor stays outside the annotation, and QuPath's area is the tumor's).

Coordinates are image pixels at the image's own resolution with QuPath's convention: pixel
(row r, column c) covers ``[c, c + 1) x [r, r + 1)``, so a ring runs between the centres of
tumor and non-tumor pixels and encloses exactly the tumor pixels' centres. Exterior rings
are counter-clockwise and holes clockwise in (x, y) (RFC 7946).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours

from .atomic import atomic_path

#: QuPath class of the region and its colour (RGB), like QuPath's own "Tumor" class.
TUMOR_CLASS = "Tumor"
TUMOR_COLOUR = (200, 0, 0)
#: Rings are simplified (Douglas-Peucker) by at most this many pixels; QuPath's own
#: pixel-classifier exports are coarser. 0 keeps every marching-squares vertex.
SIMPLIFY_PX = 0.5


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _ring(contour: np.ndarray, y0: int, x0: int, tolerance: float, ccw: bool) -> list[list[float]]:
    from skimage.measure import approximate_polygon  # scipy.signal: ~0.5 s, off napari's reader import

    c = contour
    if tolerance > 0:
        s = approximate_polygon(c, tolerance)
        if len(s) >= 4:  # a tiny ring simplified to a line keeps its full outline
            c = s
    # (row, col) of the padded crop -> (x, y) image pixels, pixel corners at integers.
    ring = np.stack([c[:, 1] + x0 + 0.5, c[:, 0] + y0 + 0.5], axis=1)
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    if (_signed_area(ring) > 0) != ccw:
        ring = ring[::-1]
    return np.round(ring, 3).tolist()


def mask_polygons(mask: np.ndarray, tolerance: float = SIMPLIFY_PX) -> list[list[list[list[float]]]]:
    """Polygons (outer ring, then hole rings; each ring closed (x, y) pairs) of a mask's parts.

    Parts are 4-connected (the marching squares' reading of diagonal touches), largest first.
    """
    mask = np.asarray(mask) > 0
    parts, n = ndi.label(mask)
    out = []
    for idx, sl in enumerate(ndi.find_objects(parts), start=1):
        if sl is None:
            continue
        crop = np.pad(parts[sl] == idx, 1).astype(np.float32)
        contours = [c for c in find_contours(crop, 0.5) if len(c) >= 3]
        if not contours:
            continue
        y0, x0 = sl[0].start - 1, sl[1].start - 1
        areas = [abs(_signed_area(np.stack([c[:, 1], c[:, 0]], 1))) for c in contours]
        k = int(np.argmax(areas))
        rings = [_ring(contours[k], y0, x0, tolerance, ccw=True)]
        rings += [_ring(c, y0, x0, tolerance, ccw=False) for j, c in enumerate(contours) if j != k]
        out.append((int(np.count_nonzero(parts[sl] == idx)), rings))
    out.sort(key=lambda t: -t[0])
    return [rings for _, rings in out]


@dataclass
class TumorArea:
    """Area of a tumor mask in one image.

    Attributes:
        tumor_area_fraction: tumor pixels / image pixels.
        tumor_tissue_fraction: tumor pixels / tissue pixels (tissue: not glass-white; None
            without the image).
        tumor_area_mm2: tumor area in mm^2 (None without a pixel size).
        tumor_regions: number of connected tumor regions (annotations written).
    """

    tumor_area_fraction: float
    tumor_tissue_fraction: Optional[float]
    tumor_area_mm2: Optional[float]
    tumor_regions: int

    def as_dict(self) -> dict:
        return asdict(self)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue pixels: not bright glass in every channel (a 3x3 median against JPEG noise)."""
    bright = (np.asarray(rgb)[..., :3] > 215).all(-1)
    return ~ndi.median_filter(bright.astype(np.uint8), 3).astype(bool)


def tumor_area(mask: np.ndarray, rgb: Optional[np.ndarray] = None, mpp: Optional[float] = None) -> TumorArea:
    """The :class:`TumorArea` of a tumor mask (optionally with its image and pixel size)."""
    mask = np.asarray(mask) > 0
    n = int(np.count_nonzero(mask))
    tissue = None
    if rgb is not None:
        t = tissue_mask(rgb)
        nt = int(np.count_nonzero(t | mask))  # tumor counts as tissue even where pale
        tissue = n / nt if nt else 0.0
    return TumorArea(
        tumor_area_fraction=n / mask.size if mask.size else 0.0,
        tumor_tissue_fraction=tissue,
        tumor_area_mm2=None if not mpp else n * float(mpp) ** 2 / 1e6,
        tumor_regions=int(ndi.label(mask)[1]),
    )


def tumor_geojson(mask: np.ndarray, mpp: Optional[float] = None, tolerance: float = SIMPLIFY_PX) -> dict:
    """The tumor region as a GeoJSON FeatureCollection of QuPath annotations (class Tumor)."""
    features = []
    for i, rings in enumerate(mask_polygons(mask, tolerance), start=1):
        props = {
            "objectType": "annotation",
            "name": f"Tumor region {i}",
            "isLocked": False,
            "classification": {"name": TUMOR_CLASS, "color": list(TUMOR_COLOUR)},
        }
        if mpp:
            outer = abs(_signed_area(np.asarray(rings[0])))
            holes = sum(abs(_signed_area(np.asarray(r))) for r in rings[1:])
            props["measurements"] = {"area_um2": round((outer - holes) * float(mpp) ** 2, 3)}
        features.append(
            {
                "type": "Feature",
                "id": f"tumor-region-{i}",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_tumor_geojson(mask: np.ndarray, path, overwrite: bool = False, mpp: Optional[float] = None) -> Path:
    """Write :func:`tumor_geojson` atomically (refuses to replace a file unless ``overwrite``)."""
    doc = tumor_geojson(mask, mpp)
    with atomic_path(path, overwrite) as tmp:
        Path(tmp).write_text(json.dumps(doc))
    return Path(path)

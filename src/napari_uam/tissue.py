"""Tissue detection at low resolution: where on a slide there is tissue worth segmenting.

A slide is mostly glass; segmenting a tile of glass costs seconds for no nucleus. From the
overview the tiled path already builds (the image subsampled by ``step``), a pixel is tissue
when it is coloured (HSV saturation) or absorbs light (optical density); specks smaller than a
few cells and holes smaller than a gland lumen are cleaned away; pen and marking ink
(strongly saturated blue or green strokes, near-black blots) are not tissue: H&E is pink to
purple, never green or sky blue, and a nucleus is dark purple, not black.

The mask only decides which tiles are skipped and what area is reported; the image-level
statistics (stain estimate, watershed levels) stay those of the whole overview.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class TissueParams:
    """Thresholds of :func:`detect_tissue` (colours in 0..1 HSV, areas in um^2).

    Attributes:
        min_saturation: a pixel at least this saturated is tissue (glass is grey-white, < 0.05;
            pale eosin stroma is ~0.1).
        min_od: or one whose mean optical density is at least this (glass ~0.02).
        pen_saturation, pen_hue: ink is at least this saturated with a hue in this range
            (degrees: green 75 .. blue 235; hematoxylin is ~250-300, eosin ~300-360).
        black_value: ink darker than this (max channel, 0..255) is black (nuclei stay above ~80).
        pen_min_um2: ink areas smaller than this are stain, not a stroke (a nucleus is ~50).
        min_tissue_um2: tissue specks smaller than this are dust or debris.
        max_hole_um2: holes smaller than this inside tissue are tissue (lumina, fat cells).
        margin_um: the mask is grown by this much before deciding which tiles hold tissue, so
            a faint tissue edge below the thresholds is still processed.
    """

    min_saturation: float = 0.08
    min_od: float = 0.15
    pen_saturation: float = 0.35
    pen_hue: tuple = (75.0, 235.0)
    black_value: float = 60.0
    pen_min_um2: float = 500.0
    min_tissue_um2: float = 2000.0
    max_hole_um2: float = 20000.0
    margin_um: float = 50.0


@dataclass(frozen=True)
class TissueMask:
    """Tissue on an overview of the image.

    Attributes:
        tissue: (h, w) bool, overview pixel (i, j) is image pixel (i * step, j * step).
        pen: (h, w) bool, ink found (excluded from ``tissue``).
        grown: ``tissue`` grown by the margin: what :meth:`any_in` looks at.
        step: image pixels per overview pixel.
        mpp: microns per image pixel.
    """

    tissue: np.ndarray
    pen: np.ndarray
    grown: np.ndarray
    step: int
    mpp: float

    @property
    def fraction(self) -> float:
        """Share of the image that is tissue."""
        return float(self.tissue.mean()) if self.tissue.size else 0.0

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm^2."""
        return float(self.tissue.sum()) * (self.step * self.mpp) ** 2 / 1e6

    def any_in(self, box) -> bool:
        """Whether the image region ``(y0, y1, x0, x1)`` holds tissue (within the margin)."""
        y0, y1, x0, x1 = (int(v) for v in box)
        s = self.step
        sub = self.grown[y0 // s : -(-y1 // s), x0 // s : -(-x1 // s)]
        return bool(sub.any())

    def summary(self) -> dict:
        """What the provenance records."""
        return {
            "tissue_area_mm2": round(self.area_mm2, 4),
            "tissue_fraction": round(self.fraction, 4),
            "pen_fraction": round(float(self.pen.mean()) if self.pen.size else 0.0, 4),
            "tissue_mask_step": self.step,
        }


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation (0..1) and value (0..255) of (h, w, 3) uint8 RGB, float32."""
    c = rgb.astype(np.float32)
    mx, mn = c.max(axis=-1), c.min(axis=-1)
    d = mx - mn
    sat = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0.0)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    dd = np.maximum(d, 1e-6)
    hue = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) * 60.0
    return np.where(d > 0, hue, 0.0).astype(np.float32), sat.astype(np.float32), mx


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """``mask`` without its connected parts of fewer than ``min_px`` pixels (4-connected).

    Written out rather than skimage's ``remove_small_objects``, whose size argument changed
    meaning in 0.26 (the project supports 0.22 on)."""
    lab, n = ndi.label(mask)
    if not n:
        return mask.copy()
    keep = np.bincount(lab.ravel()) >= min_px
    keep[0] = False
    return keep[lab]


def _px(um2: float, px_um: float) -> int:
    return max(1, int(round(um2 / (px_um * px_um))))


def detect_tissue(overview: np.ndarray, step: int, mpp: float, params: Optional[TissueParams] = None) -> TissueMask:
    """Tissue, without background and ink, on an overview of the image.

    Args:
        overview: (h, w, 3) uint8 RGB, the image subsampled by ``step``.
        step: image pixels per overview pixel.
        mpp: microns per image pixel.
        params: thresholds (defaults when None).

    Returns:
        :class:`TissueMask`.
    """
    p = params or TissueParams()
    px_um = step * mpp
    hue, sat, val = _hsv(overview)
    od = -np.log10((overview.astype(np.float32).mean(axis=-1) + 1.0) / 256.0)
    ink = (sat >= p.pen_saturation) & (hue >= p.pen_hue[0]) & (hue <= p.pen_hue[1])
    ink |= val < p.black_value
    # A stroke is wide and long; single saturated or dark pixels are stain. The stroke's pale
    # rim (ink thinning out) is taken with it by growing it a little.
    pen = _drop_small(ink, _px(p.pen_min_um2, px_um))
    if pen.any():
        pen = ndi.binary_dilation(pen, iterations=max(1, int(round(10.0 / px_um))))
    tissue = ((sat >= p.min_saturation) | (od >= p.min_od)) & ~pen
    tissue = _drop_small(tissue, _px(p.min_tissue_um2, px_um))
    tissue = ~_drop_small(~tissue, _px(p.max_hole_um2, px_um)) & ~pen  # small holes filled
    # Grown through the distance to tissue: round, and one pass whatever the margin.
    r = p.margin_um / px_um
    grown = ndi.distance_transform_edt(~tissue) <= r if tissue.any() and not tissue.all() else tissue
    return TissueMask(tissue=tissue, pen=pen, grown=grown, step=int(step), mpp=float(mpp))


__all__ = ["TissueMask", "TissueParams", "detect_tissue"]

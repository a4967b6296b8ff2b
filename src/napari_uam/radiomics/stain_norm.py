"""Per-image stain vectors (Macenko et al., 2009) and stain normalisation to a reference.

Two hospitals' H&E differ mostly in how much of each stain the tissue took up and in the hue
of each stain. Both are visible in optical-density (OD) space, where each pixel is a mix of a
hematoxylin and an eosin vector. Macenko's estimate, per image:

1. OD of every tissue pixel (``-log10((I + 1) / 256)``; glass, OD < :data:`OD_THRESHOLD` in
   every channel, is left out);
2. the plane of the two largest principal directions of the tissue ODs;
3. the two extreme angles (1st / 99th percentile) of the pixels in that plane are the two
   stain vectors; the one with more red OD is hematoxylin;
4. concentrations of each pixel by least squares; their 99th percentile is the stain's
   "maximum" (how dark the darkest chromatin is).

Normalisation re-synthesises the image with the reference stain vectors and reference maxima
(:data:`REF_STAINS`, :data:`REF_MAX`), so features measured on the result describe the cell,
not the batch of stain. It is deterministic NumPy (the same on every device, so the fast and
the reference radiomics backends see the same integers). An image with too little tissue for
an estimate is returned unchanged and flagged (``StainEstimate.ok`` False).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import raise_if_cancelled
from .schema import _od

#: A pixel is tissue when its OD exceeds this in at least one channel (Macenko's beta).
OD_THRESHOLD = 0.15
#: Percentile of the in-plane angle taken as each stain's direction (Macenko's alpha).
ANGLE_PERCENTILE = 1.0
#: Percentile of each stain's concentration taken as its maximum.
MAX_PERCENTILE = 99.0
#: Fewest tissue pixels for an estimate.
MIN_TISSUE_PIXELS = 2000
#: Pixels sampled for the estimate (a strided subsample: the estimate is a few percentiles).
SAMPLE_PIXELS = 250_000

#: Reference stain OD vectors (rows: hematoxylin, eosin; columns R, G, B; unit length) and
#: maxima: the medians of the per-image Macenko estimates over the training images of every
#: cell source (``python -m research.cells.stain_reference``).
REF_STAINS = np.array([[0.5373, 0.765, 0.355], [0.2349, 0.9182, 0.319]])
REF_MAX = np.array([0.8813, 0.4788])


@dataclass(frozen=True)
class StainEstimate:
    """Macenko stain estimate of one image.

    Attributes:
        stains: (2, 3) unit OD vectors (hematoxylin, eosin) over R, G, B.
        max_conc: (2,) 99th-percentile concentration of each stain.
        tissue_fraction: share of pixels that are tissue.
        ok: False when the image holds too little tissue for an estimate (``stains`` and
            ``max_conc`` are then the reference values).
    """

    stains: np.ndarray
    max_conc: np.ndarray
    tissue_fraction: float
    ok: bool

    def as_dict(self) -> dict:
        return {
            "hematoxylin": [round(float(v), 4) for v in self.stains[0]],
            "eosin": [round(float(v), 4) for v in self.stains[1]],
            "max_conc": [round(float(v), 4) for v in self.max_conc],
            "tissue_fraction": round(float(self.tissue_fraction), 4),
            "ok": bool(self.ok),
        }


#: Optical density of each 8-bit intensity: the measurement channels' formula (schema._od).
_OD_LUT = _od(np.arange(256))


def _sample(rgb: np.ndarray) -> np.ndarray:
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / SAMPLE_PIXELS)))
    return rgb[::step, ::step].reshape(-1, 3)


def estimate_stains(rgb: np.ndarray) -> StainEstimate:
    """Macenko stain vectors and maxima of an (H, W, 3) uint8 RGB image."""
    od = _OD_LUT[_sample(rgb)]
    tissue = np.any(od > OD_THRESHOLD, axis=1)
    frac = float(tissue.mean()) if tissue.size else 0.0
    od = od[tissue]
    if len(od) < MIN_TISSUE_PIXELS:
        return StainEstimate(REF_STAINS.copy(), REF_MAX.copy(), frac, False)
    # Principal plane of the tissue ODs (eigenvectors of the covariance about the origin,
    # as Macenko: the stains are directions from 0, not from the mean).
    _, vecs = np.linalg.eigh(od.T @ od / len(od))
    plane = vecs[:, [2, 1]]  # largest first
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100.0 - ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # Hematoxylin absorbs more red than eosin does.
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    stains = np.stack([h, e])
    stains = np.abs(stains) / np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
    max_conc = np.percentile(conc, MAX_PERCENTILE, axis=1)
    if not np.all(np.isfinite(max_conc)) or np.any(max_conc <= 1e-3):
        return StainEstimate(REF_STAINS.copy(), REF_MAX.copy(), frac, False)
    return StainEstimate(stains, max_conc, frac, True)


def normalise_stain(rgb: np.ndarray, estimate: StainEstimate | None = None, cancel=None) -> np.ndarray:
    """``rgb`` re-synthesised with the reference stains and maxima (uint8, same shape).

    Pixels are deconvolved with the image's own stain vectors, each concentration is scaled
    by ``REF_MAX / max_conc``, and the image is rebuilt from :data:`REF_STAINS`. The residual
    OD (what the two stains do not explain) is dropped, as in Macenko's method. An image
    without a usable estimate is returned unchanged. ``cancel() -> bool`` (optional) is polled
    between row blocks (:class:`~napari_uam.errors.CancelledError`).
    """
    est = estimate if estimate is not None else estimate_stains(rgb)
    if not est.ok:
        return rgb
    # Per-colour lookup over the 2**24 RGB codes would be 16 M entries per image; a per-pixel
    # solve is cheaper for patches and as exact. Work in row blocks to bound the float64 memory.
    pinv = np.linalg.pinv(est.stains.T)  # (2, 3): OD -> concentrations
    scale = (REF_MAX / est.max_conc)[:, None]
    to_conc = (pinv * scale).T  # (3, 2): OD row vector -> reference-scaled concentrations
    out = np.empty_like(rgb)
    rows = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], rows):
        raise_if_cancelled(cancel)
        od = _OD_LUT[rgb[y : y + rows]]
        conc_od = np.maximum(od @ to_conc, 0.0) @ REF_STAINS
        out[y : y + rows] = np.clip(np.rint(256.0 * np.power(10.0, -conc_od) - 1.0), 0, 255).astype(np.uint8)
    return out

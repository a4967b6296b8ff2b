"""Resampling between an image's pixel size and the working pixel size of the pipeline.

All parameters of napari-uam are in microns; the pipeline resamples an image to one working
pixel size (the feature schema's) so that 20x and 40x patches give comparable features.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Relative difference of pixel sizes under which no resampling is done.
_SAME = 0.01


def scale_factor(mpp: float, target_mpp: float) -> float:
    """Zoom factor from an image at ``mpp`` to ``target_mpp`` (>1 enlarges)."""
    if not (mpp > 0 and target_mpp > 0):
        raise ValueError(f"Pixel sizes must be positive (got mpp={mpp}, target={target_mpp}).")
    f = mpp / target_mpp
    return 1.0 if abs(f - 1.0) < _SAME else f


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Zoom an (H, W[, C]) image by ``factor``: area average when shrinking, linear when enlarging.

    Returns the same dtype as the input.
    """
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    out_h, out_w = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    src = image.astype(np.float32)
    if factor < 1.0:
        # Box-filter then sample: an area average that avoids aliasing of the stain texture.
        k = 1.0 / factor
        sizes = (k, k) + ((1,) if image.ndim == 3 else ())
        src = ndi.uniform_filter(src, size=[max(1, int(round(s))) for s in sizes], mode="nearest")
    zoom = (out_h / h, out_w / w) + ((1,) if image.ndim == 3 else ())
    out = ndi.zoom(src, zoom, order=1, mode="nearest", grid_mode=True)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(image.dtype)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to ``shape`` (pixel centres aligned)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]

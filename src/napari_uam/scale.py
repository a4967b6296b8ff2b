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
    if factor == 0.5 and h % 2 == 0 and w % 2 == 0 and image.dtype == np.uint8:
        return _halve_uint8(image)  # 40x -> the 0.5 um/px working scale, the common case
    return _rescale_filtered(image, factor)


def _rescale_filtered(image: np.ndarray, factor: float) -> np.ndarray:
    """:func:`rescale_image` by box filter + linear zoom (any factor, dtype and size)."""
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


def _halve_uint8(image: np.ndarray) -> np.ndarray:
    """:func:`rescale_image` by 0.5 of an even-sized uint8 image, bit for bit, ~3x faster.

    There the box filter (size 2, window [i-1, i], edge repeated) followed by linear sampling
    at input coordinates 2o + 0.5 is the filter [1, 2, 1] / 4 at even pixels along each axis;
    every intermediate is a multiple of 1/16, so integer sums reproduce it exactly (the
    trained classifiers' features stay identical; tests/test_pipeline.py checks it).
    """

    def along_columns(a):  # a[:, 2o-1] + 2 a[:, 2o] + a[:, 2o+1], a[:, -1] := a[:, 0]
        even, odd = a[:, 0::2], a[:, 1::2]
        return np.concatenate([a[:, :1], odd[:, :-1]], axis=1) + 2 * even + odd

    s = along_columns(along_columns(image.astype(np.int32)).swapaxes(0, 1)).swapaxes(0, 1)
    return np.round(s / 16.0).astype(np.uint8)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to ``shape`` (pixel centres aligned)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]

"""Resampling between an image's pixel size and the working pixel size of the pipeline.

All parameters of napari-uam are in microns; the pipeline resamples an image to one working
pixel size (the feature schema's) so that 20x and 40x patches give comparable features.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage as ndi

from . import validation  # the module: MAX_PIXELS is read at call time (tests lower it)
from .errors import InvalidImageError

#: Relative difference of pixel sizes under which no resampling is done.
_SAME = 0.01
#: Enlargement per side above which resampling is refused: a nucleus (about 7 um across) is
#: then one or two pixels of the image, and zooming it invents detail that is not there. At
#: the segmenter's 0.25 um/px that is any pixel size above 4 um/px (coarser than 2.5x).
MAX_ENLARGE = 16.0
#: Enlargement per side above which a warning says the run will be slow: the work grows
#: with the square (a 491x491 patch at ``--mpp 5`` took 191 s instead of 2 s).
SLOW_ENLARGE = 4.0


class ResampleWarning(UserWarning):
    """Resampling to the working pixel size enlarges the image so much that the run is slow."""


def resampled_shape(shape, factor: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` (H, W, ...) zoomed by ``factor`` (as :func:`rescale_image`)."""
    h, w = int(shape[0]), int(shape[1])
    if factor == 1.0:
        return h, w
    return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def check_resample(shape, mpp: float, target_mpp: float, what: str = "the pipeline") -> float:
    """Refuse or warn about resampling an image of ``shape`` from ``mpp`` to ``target_mpp``.

    Only the shape is looked at, so callers check before decoding or allocating anything.

    Args:
        shape: (H, W, ...) of the image at ``mpp``.
        mpp: the image's pixel size (um/px).
        target_mpp: the working pixel size it is resampled to.
        what: the stage that works at ``target_mpp`` (for the messages).

    Returns:
        The zoom factor.

    Raises:
        InvalidImageError: the resampled image would exceed
            :data:`napari_uam.validation.MAX_PIXELS`, or the enlargement exceeds
            :data:`MAX_ENLARGE` (the pixel size is then almost certainly wrong).

    Warns:
        ResampleWarning: the enlargement exceeds :data:`SLOW_ENLARGE`.
    """
    factor = scale_factor(mpp, target_mpp)
    h, w = int(shape[0]), int(shape[1])
    oh, ow = resampled_shape(shape, factor)
    pixels = oh * ow
    where = (
        f"At {mpp:g} um/px, {what} resamples this {h}x{w} image to {target_mpp:g} um/px, "
        f"i.e. to {oh}x{ow} pixels ({pixels / 1e6:.0f} Mpx)"
    )
    if factor > MAX_ENLARGE:
        raise InvalidImageError(
            f"{where}: a {factor:.0f}-fold enlargement, where nuclei are only 1-2 pixels across. "
            f"The pixel size is almost certainly wrong: check --mpp / the file's metadata "
            "(0.25 at 40x, 0.5 at 20x)."
        )
    if pixels > validation.MAX_PIXELS:
        raise InvalidImageError(
            f"{where}, over the {validation.MAX_PIXELS / 1e6:.0f} Mpx limit. Check the pixel size "
            "(--mpp / the file's metadata), or crop the image."
        )
    if factor > SLOW_ENLARGE:
        warnings.warn(
            f"{where}: {factor * factor:.0f} times the pixels, so the run is that much slower. "
            "Check the pixel size (0.25 at 40x, 0.5 at 20x).",
            ResampleWarning,
            stacklevel=2,
        )
    return factor


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
    _check_output_size(image.shape, factor)
    h, w = image.shape[:2]
    if factor == 0.5 and h % 2 == 0 and w % 2 == 0 and image.dtype == np.uint8:
        return _halve_uint8(image)  # 40x -> the 0.5 um/px working scale, the common case
    return _rescale_filtered(image, factor)


def _check_output_size(shape, factor: float) -> None:
    """Refuse a zoom whose result exceeds the pixel limit, before anything is allocated.

    The callers check the pixel size up front (:func:`check_resample`); this is the last
    guard for any path that did not (a 491x491 patch said to be at 20 um/px once asked for
    17 GiB here).
    """
    oh, ow = resampled_shape(shape, factor)
    if oh * ow > validation.MAX_PIXELS:
        raise InvalidImageError(
            f"Resampling this {shape[0]}x{shape[1]} image by {factor:g} would make it {oh}x{ow} "
            f"pixels ({oh * ow / 1e6:.0f} Mpx), over the {validation.MAX_PIXELS / 1e6:.0f} Mpx "
            "limit: check the pixel size (0.25 at 40x, 0.5 at 20x)."
        )


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

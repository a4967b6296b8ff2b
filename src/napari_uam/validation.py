"""Checks applied wherever an image or a labels array enters napari-uam.

Each check returns a clean array or raises a typed error whose message says what is wrong
and what to do, so a widget can show it and a script can catch it.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidImageError, InvalidLabelsError

#: Smallest side (pixels) of an image the pipeline accepts: below this no nucleus fits.
MIN_SIDE = 8


def as_rgb_uint8(image) -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 RGB array, or raise :class:`InvalidImageError`.

    Accepted: uint8 RGB; RGBA whose alpha is fully opaque (alpha dropped); 16-bit RGB
    (scaled by 257); float RGB in [0, 1] or [0, 255]. Rejected with a message: grayscale,
    other channel counts, non-finite values, negative values, images smaller than
    ``MIN_SIDE`` pixels, and partially transparent RGBA (whose colours are not tissue).

    Args:
        image: array-like of shape (H, W, C).

    Returns:
        np.ndarray: (H, W, 3) uint8, a new array (the input is never modified).
    """
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InvalidImageError(
            f"Image has dtype {arr.dtype}; expected a numeric RGB image (uint8, uint16 or float)."
        )
    if arr.ndim == 2:
        raise InvalidImageError(
            f"Image is grayscale (shape {arr.shape}); napari-uam needs an RGB H&E image "
            "(H, W, 3). Open the colour image, not a single channel."
        )
    if arr.ndim != 3:
        raise InvalidImageError(
            f"Image has shape {arr.shape}; expected a 2-D RGB image (H, W, 3). "
            "For stacks or pyramids, select one 2-D RGB plane or level."
        )
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        full = np.iinfo(arr.dtype).max if arr.dtype.kind in "iu" else (255 if alpha.max() > 1 else 1)
        if not np.all(alpha == full):
            raise InvalidImageError(
                "Image is RGBA with transparent pixels; napari-uam needs opaque RGB. "
                "Flatten the image onto a white background first."
            )
        arr = arr[..., :3]
    if arr.shape[-1] != 3:
        raise InvalidImageError(
            f"Image has {arr.shape[-1]} channels; expected 3 (RGB). "
            "Multiplexed or grayscale data is not an H&E image."
        )
    h, w = arr.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InvalidImageError(
            f"Image is {h}x{w} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed to hold a nucleus."
        )
    if arr.dtype == np.uint8:
        return arr.copy()
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InvalidImageError("Image contains NaN or infinite values; fix or mask them first.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0:
            raise InvalidImageError(f"Image has negative values (min {lo:g}); expected intensities >= 0.")
        if hi <= 1.0:
            return np.round(arr * 255.0).astype(np.uint8)
        if hi <= 255.0:
            return np.round(arr).astype(np.uint8)
        raise InvalidImageError(
            f"Float image has values up to {hi:g}; expected [0, 1] or [0, 255]. Rescale it first."
        )
    if arr.dtype == np.uint16:
        return (arr.astype(np.uint32) // 257).astype(np.uint8)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InvalidImageError(
                f"Integer image of dtype {arr.dtype} has values in [{lo}, {hi}]; expected 0..255 "
                "(8-bit) or a uint16 image."
            )
        return arr.astype(np.uint8)
    raise InvalidImageError(f"Unsupported image dtype {arr.dtype}.")


def as_labels(labels, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``labels`` as a 2-D int32 instance map, or raise :class:`InvalidLabelsError`.

    Args:
        labels: array-like (H, W) of non-negative integers, 0 = background. Gaps in the label
            ids are allowed.
        shape: if given, the (H, W) the labels must have (the image's).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InvalidLabelsError(f"Labels have shape {arr.shape}; expected a 2-D (H, W) instance map.")
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        raise InvalidLabelsError(
            f"Labels are {arr.shape[0]}x{arr.shape[1]} but the image is {shape[0]}x{shape[1]}; "
            "choose the labels layer that belongs to this image."
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InvalidLabelsError("Labels contain non-integer values; expected integer label ids.")
    elif arr.dtype.kind not in "iub":
        raise InvalidLabelsError(f"Labels have dtype {arr.dtype}; expected integers.")
    if arr.size and arr.min() < 0:
        raise InvalidLabelsError("Labels contain negative ids; expected 0 (background) and positive ids.")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise InvalidLabelsError("Label ids exceed the int32 range; relabel the image first.")
    return arr.astype(np.int32, copy=True)

"""Checks applied wherever an image or a labels array enters napari-uam.

Each check returns a clean array or raises a typed error whose message says what is wrong
and what to do, so a widget can show it and a script can catch it.
"""

from __future__ import annotations

import warnings

import numpy as np
from skimage.color import rgb2hed

from .errors import InvalidImageError, InvalidLabelsError, NoNucleiError

#: Smallest side (pixels) of an image the pipeline accepts: below this no nucleus fits.
MIN_SIDE = 8
#: Largest image (pixels) processed in one piece: 100 Mpx, e.g. 10000x10000. The pipeline holds
#: the image, its labels and per-pixel float intermediates in memory (tens of bytes per pixel),
#: so a whole slide must be cropped, or processed in tiles (:mod:`napari_uam.tiling`, which the
#: command line uses for large images), rather than exhaust the machine's memory.
MAX_PIXELS = 100_000_000


def as_rgb_uint8(image) -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 RGB array, or raise :class:`InvalidImageError`.

    Accepted: uint8 RGB; RGBA whose alpha is fully opaque (alpha dropped); 16-bit RGB
    (scaled by 257); float RGB in [0, 1] or [0, 255]. Rejected with a message: grayscale,
    other channel counts, non-finite values, negative values, images smaller than
    ``MIN_SIDE`` pixels or larger than :data:`MAX_PIXELS`, and 4-channel images whose 4th
    channel is not an opaque alpha (transparent RGBA, CMYK).

    Args:
        image: array-like of shape (H, W, C).

    Returns:
        np.ndarray: (H, W, 3) uint8, a new array (the input is never modified).
    """
    arr = np.asarray(image)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InvalidImageError(f"Image has dtype {arr.dtype}; expected a numeric RGB image (uint8, uint16 or float).")
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
    _check_layout(arr.shape)
    check_size(arr.shape)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        full = np.iinfo(arr.dtype).max if arr.dtype.kind in "iu" else (255 if alpha.max() > 1 else 1)
        if not np.all(alpha == full):
            # A CMYK or 4-channel multiplex image lands here too: its 4th channel varies.
            raise InvalidImageError(
                "Image has 4 channels and the 4th is not an opaque alpha (RGBA with transparent "
                "pixels, or CMYK / multiplexed data); napari-uam needs opaque RGB. Flatten the image "
                "onto a white background or convert it to RGB first."
            )
        arr = arr[..., :3]
    if arr.shape[-1] != 3:
        raise InvalidImageError(
            f"Image has {arr.shape[-1]} channels; expected 3 (RGB). Multiplexed or grayscale data is not an H&E image."
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
        raise InvalidImageError(f"Float image has values up to {hi:g}; expected [0, 1] or [0, 255]. Rescale it first.")
    if arr.dtype == np.uint16:
        top = int(arr.max())
        if 0 < top < _FULL_16BIT_MIN:
            # 10/12/14-bit sensor data in a 16-bit container: divided by 257 it would be a
            # near-black image on which every result is noise.
            raise InvalidImageError(
                f"16-bit image with values only up to {top}: this looks like 10-, 12- or 14-bit "
                "camera data stored in 16 bits. Scale it to the full 16-bit (or 8-bit) range "
                "first, e.g. multiply a 12-bit image by 16."
            )
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


def _check_layout(shape) -> None:
    """Describe 3-D arrays that are not (H, W, channels) for what they are.

    Without this a 5-page grey stack (5, 491, 491) was "5x491 pixels" and a channels-first
    (3, 1000, 1000) array "3x1000 pixels"; grey + alpha (H, W, 2) is grey like (H, W).
    """
    a, b, c = (int(v) for v in shape)
    if c in (1, 2):
        raise InvalidImageError(
            f"Image is grayscale{' with an alpha channel' if c == 2 else ''} (shape {tuple(shape)}); "
            "napari-uam needs an RGB H&E image (H, W, 3). Open the colour image, not a single channel."
        )
    if c <= 4:
        return
    if a in (3, 4):
        raise InvalidImageError(
            f"Image has shape {tuple(shape)}: {a} channels first. napari-uam needs the channels last "
            f"(H, W, {a}); move the axis (numpy.moveaxis(image, 0, -1)) or save it as an RGB image."
        )
    if a < b and a < c:
        raise InvalidImageError(
            f"Image has shape {tuple(shape)}: a stack of {a} single-channel {b}x{c} planes (pages, "
            "z-slices or channels), not an RGB image (H, W, 3). Open the colour H&E image, or select "
            "one RGB plane."
        )


def check_size(shape) -> None:
    """Raise :class:`InvalidImageError` if an image of ``shape`` (H, W, ...) is too small or too big.

    Only the shape is looked at, so a reader can refuse a huge file before decoding its pixels.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InvalidImageError(f"Image is {h}x{w} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed to hold a nucleus.")
    if h * w > MAX_PIXELS:
        raise InvalidImageError(
            f"Image is {h}x{w} pixels ({h * w / 1e6:.0f} Mpx); napari-uam processes images of up to "
            f"{MAX_PIXELS / 1e6:.0f} Mpx (e.g. 10000x10000) in one piece. Crop a region, or run the "
            "command line (napari-uam classify IMAGE --out DIR), which processes large images in tiles."
        )


#: A 16-bit image whose largest value is below this holds 12-bit (or fewer) data.
_FULL_16BIT_MIN = 4096

#: Brightness (0-255, brightest channel) below which most of a brightfield image never is.
_DARK_MEDIAN = 50
#: Brightness the brightest objects of a fluorescence image reach.
_BRIGHT_OBJECTS = 100


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
    """(H, W) max over the 3 channels (``rgb.max(axis=-1)`` reduces a 3-long axis ~25x slower)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def check_brightfield(rgb: np.ndarray) -> None:
    """Raise :class:`InvalidImageError` if ``rgb`` looks like a fluorescence / dark-field image.

    H&E is brightfield: glass and tissue are bright and nuclei darker. A fluorescence image is
    the reverse (black background, bright nuclei), and the H&E segmenters would take its black
    background for stain. The test: the brightest channel is dark (< 50) in most pixels while
    some objects are bright (>= 100). A uniform black image is not flagged (it has no nuclei,
    and says so later).

    Args:
        rgb: (H, W, 3) uint8 RGB, as returned by :func:`as_rgb_uint8`.
    """
    # A strided sample is enough for a median and keeps the check cheap on large images.
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1_000_000)))
    peak = _brightest_channel(rgb[::step, ::step])
    median, top = (float(v) for v in np.percentile(peak, [50, 99.9]))
    if median < _DARK_MEDIAN and top >= _BRIGHT_OBJECTS:
        raise InvalidImageError(
            f"Image is mostly dark (median brightness {median:.0f}/255) with bright objects: it "
            "looks like a fluorescence or dark-field image. napari-uam needs a brightfield H&E "
            "image (white background, purple nuclei)."
        )


class StainWarning(UserWarning):
    """The image is brightfield but does not look like H&E (e.g. IHC with DAB)."""


#: DAB optical density above which a tissue pixel counts as brown, and the share of such
#: pixels above which the image is taken for IHC. No H&E image of the development data comes
#: near it (tests/test_validation.py::test_no_stain_warning_on_any_real_he_image checks all 150); a DAB-stained field has most pixels brown.
_DAB_OD = 0.15
_DAB_SHARE = 0.2


def check_he_stain(rgb: np.ndarray) -> bool:
    """Warn (:class:`StainWarning`) when a brightfield image looks like IHC (brown DAB), not H&E.

    IHC slides carry a hematoxylin counterstain, so segmentation may still work, but the
    classifier was trained on H&E only; the user is told and decides. Returns True if it warned.

    Args:
        rgb: (H, W, 3) uint8 RGB.
    """
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    sample = rgb[::step, ::step]
    hed = rgb2hed(sample)
    # Near-black pixels have a high optical density in every stain: they are not tissue colour.
    tissue = (hed.sum(axis=-1) > 0.05) & (_brightest_channel(sample) >= 40)
    if tissue.sum() < 100:
        return False
    share = float((hed[..., 2][tissue] > _DAB_OD).mean())
    if share > _DAB_SHARE:
        warnings.warn(
            f"{share:.0%} of the tissue is brown (DAB): this looks like an IHC stain, not H&E. "
            "Nuclei may still be found from the hematoxylin counterstain, but the tumor classes "
            "are only validated on H&E; check the results or use an H&E section.",
            StainWarning,
            stacklevel=3,
        )
        return True
    return False


class NotTissueError(InvalidImageError, NoNucleiError):
    """The image is not brightfield H&E tissue (blank, noise, underexposed, grey)."""


#: Thresholds of :func:`check_he_tissue`, each set with a wide margin from every image of
#: every source in ../shared/data (tests/test_validation.py::test_real_he_of_every_source_is_accepted runs them all): the smallest
#: tissue share there is 0.07 (a CoNSeP field), the darkest median brightness 111, the least
#: chroma 10, the lowest neighbour correlation 0.48 (a 100x oral tile); random RGB noise
#: has a correlation of ~0, a blank slide no tissue, a grey image saved as RGB no chroma.
_MIN_TISSUE = 0.02
_MIN_BRIGHTNESS = 60
_MIN_CHROMA = 6.0
_MIN_CORRELATION = 0.3


def he_tissue_stats(rgb: np.ndarray) -> dict:
    """The measurements :func:`check_he_tissue` judges an image by.

    Returns:
        dict: ``tissue`` (share of pixels with optical density > 0.3), ``brightness`` (median of
        the brightest channel, 0-255), ``chroma`` (median max-min channel spread over tissue)
        and ``correlation`` (grey-level correlation of neighbouring pixels, in a 512 px crop).
    """
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    s = rgb[::step, ::step].astype(np.float32)
    od_sum = -np.log(np.maximum(s, 1.0) / 255.0).sum(axis=-1)
    tissue = od_sum > 0.3
    spread = s.max(axis=-1) - s.min(axis=-1)
    # Texture at full resolution: nuclei and fibres make neighbouring pixels alike; sensor or
    # synthetic noise does not.
    crop = rgb[:512, :512].astype(np.float32).mean(axis=-1)
    a = crop - crop.mean()
    var = float((a * a).mean())
    corr = 0.0
    if var > 1e-6 and min(a.shape) > 1:
        corr = 0.5 * float((a[:, 1:] * a[:, :-1]).mean() + (a[1:] * a[:-1]).mean()) / var
    return {
        "tissue": float(tissue.mean()),
        "brightness": float(np.median(_brightest_channel(rgb[::step, ::step]))),
        "chroma": float(np.median(spread[tissue])) if tissue.any() else 0.0,
        "correlation": corr,
    }


def check_he_tissue(rgb: np.ndarray) -> dict:
    """Raise :class:`NotTissueError` unless ``rgb`` looks like brightfield H&E tissue.

    Refused, each with a one-line reason: a blank field (almost no stained pixel), an
    underexposed image, a grey image saved as RGB (H&E is never colourless), and noise (no
    spatial texture). Fluorescence is refused by :func:`check_brightfield`, IHC warned about
    by :func:`check_he_stain`.

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        dict: the measurements of :func:`he_tissue_stats` (recorded in the provenance).
    """
    st = he_tissue_stats(rgb)
    if st["tissue"] < _MIN_TISSUE:
        raise NotTissueError(
            f"No nuclei found: the image looks blank, only {st['tissue']:.1%} of it is stained. Open a field with tissue."
        )
    if st["brightness"] < _MIN_BRIGHTNESS:
        raise NotTissueError(
            f"No nuclei found: the image is underexposed (median brightness {st['brightness']:.0f}/255); brightfield H&E "
            "has a bright background. Check the exposure, or the bit depth of the file."
        )
    if st["chroma"] < _MIN_CHROMA:
        raise NotTissueError("Image has no colour (a grey image saved as RGB?); napari-uam needs a colour H&E image.")
    if st["correlation"] < _MIN_CORRELATION:
        raise NotTissueError(
            f"Image has no tissue texture (neighbouring pixels correlate {st['correlation']:.2f}): it "
            "looks like noise, not an H&E image."
        )
    return st


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

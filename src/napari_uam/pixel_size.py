"""Pixel-size sanity: estimate microns per pixel from the segmented nuclei.

A 40x JPEG without metadata run at the default 0.5 um/px is resampled 2x too large: the
network then sees nuclei twice their size, finds ~2x the cells and nothing says why. Nuclei
are a ruler: the 75th percentile of nucleus area (the larger, epithelial or tumor nuclei,
less sensitive to how many small lymphocytes a field holds than the median) is fairly narrow
across tissues. First measured with the shipped segmenter on 24 images of 8 sources at their
recorded pixel size: 15-81 um^2, most within 25-60; at twice the true pixel size 49-163 um^2.
On every image of the 8 sources (``docs/segmentation.md``, *Pixel-size check*, written by
``benchmarks/segmentation_bench.py``) the per-source median estimate lands within 0.89-1.20x
of the recorded pixel size, single images 0.55-2.01x.

The estimate is a warning, never a silent change: the caller's pixel size is what runs.

This module is also the one home of the pixel-size rules every entry point uses: the accepted
range (:data:`MIN_MPP`-:data:`MAX_MPP`, :func:`check_mpp`, :func:`plausible`), the default
the dock proposes (:data:`DEFAULT_MPP`), the order in which a pixel size is chosen
(:func:`choose_mpp`: the user's, else the file's, else the default) and the message when
there is none (:func:`missing_mpp_message`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidImageError

#: What the dock proposes for an image that records no pixel size: 20x.
DEFAULT_MPP = 0.5

#: Pixel sizes (um/px) napari-uam accepts at all: from 200x (0.05) to a 20 um/px overview.
#: Whether a pixel size is usable for a given image also depends on how far the pipeline must
#: resample it (:func:`napari_uam.scale.check_resample`).
MIN_MPP = 0.05
MAX_MPP = 20.0


def check_mpp(mpp) -> float:
    """Return ``mpp`` as a float, or raise :class:`InvalidImageError` when it is no pixel size.

    The one rule for every entry point (pipeline, segmenters, command line, dock, file
    metadata, projects): a finite number
    of microns per pixel within :data:`MIN_MPP`-:data:`MAX_MPP`; booleans are refused
    (``float(True)`` is 1.0, a flag passed by mistake must not become a pixel size).
    """
    if isinstance(mpp, (bool, np.bool_)):
        raise InvalidImageError(
            f"Pixel size mpp={mpp!r} is a boolean, not a number; give microns per pixel, e.g. 0.5 at 20x."
        )
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise InvalidImageError(
            f"Pixel size mpp={mpp!r} is not a number; give microns per pixel (0.25 at 40x, 0.5 at 20x)."
        ) from None
    if not np.isfinite(value) or not (MIN_MPP <= value <= MAX_MPP):
        raise InvalidImageError(
            f"Pixel size mpp={value:g} um/px is implausible (accepted: {MIN_MPP:g}-{MAX_MPP:g}); give "
            "microns per pixel (0.25 at 40x, 0.5 at 20x), not pixels per micron."
        )
    return value


def plausible(mpp) -> bool:
    """Whether ``mpp`` passes :func:`check_mpp` (for metadata, which is advisory: an
    implausible value in a file is ignored rather than refused)."""
    try:
        check_mpp(mpp)
    except InvalidImageError:
        return False
    return True


#: Microns in one resolution unit (TIFF ``ResolutionUnit`` 2 / "inch", 3 / "centimeter").
_UM_PER_UNIT = {2: 25400.0, 3: 1e4, "inch": 25400.0, "centimeter": 1e4}
#: At or below this many pixels per inch a PNG / JPEG resolution is a screen's or an editor's
#: default (72, 96, 300 dpi), not a microscope's.
MIN_MICROSCOPE_DPI = 1000.0


def mpp_from_resolution(px_per_unit, unit) -> float | None:
    """Microns per pixel of a file's resolution (pixels per inch or per centimetre), or None
    when it names no pixel size: no or another unit, not a positive number, or implausible."""
    um = _UM_PER_UNIT.get(unit.lower() if isinstance(unit, str) else unit)
    try:
        px = float(px_per_unit)
    except (TypeError, ValueError):
        return None
    if um is None or not (math.isfinite(px) and px > 0):
        return None
    mpp = um / px
    return mpp if plausible(mpp) else None


def mpp_from_dpi(dpi) -> float | None:
    """Microns per pixel of a PNG / JPEG ``dpi`` (Pillow's ``info["dpi"]``): only a
    microscope-scale resolution is a pixel size."""
    if not dpi or not dpi[0] or float(dpi[0]) <= MIN_MICROSCOPE_DPI:
        return None
    return mpp_from_resolution(dpi[0], "inch")


def choose_mpp(user=None, file=None, default=None) -> float | None:
    """The pixel size an image runs at: the user's when given, else the file's, else ``default``
    (None when none is known: the caller says so with :func:`missing_mpp_message`)."""
    for value in (user, file, default):
        if value is not None:
            return check_mpp(value)
    return None


def missing_mpp_message(name: str) -> str:
    return f"{name} does not record its pixel size; pass --mpp (0.25 at 40x, 0.5 at 20x)."


#: The 75th percentile of nucleus area (um^2) at the true pixel size, typical of H&E tissue.
REFERENCE_P75_AREA_UM2 = 38.0
#: Warn when the estimate and the given pixel size differ by more than this factor.
WARN_RATIO = 1.6
#: Fewer nuclei than this give no estimate (a percentile of a handful is noise).
MIN_NUCLEI = 30


class PixelSizeWarning(UserWarning):
    """The nuclei look too large or too small for the given pixel size."""


@dataclass(frozen=True)
class PixelSizeEstimate:
    """What the nuclei say about the pixel size.

    Attributes:
        given: the pixel size the image was processed at (um/px).
        estimate: the pixel size at which its nuclei would have typical areas (um/px).
        p75_area_um2: 75th percentile of nucleus area at ``given``.
        n_nuclei: nuclei the estimate rests on.
    """

    given: float
    estimate: float
    p75_area_um2: float
    n_nuclei: int

    @property
    def ratio(self) -> float:
        """``estimate / given`` (>1: the image is probably coarser than stated)."""
        return self.estimate / self.given

    @property
    def disagrees(self) -> bool:
        """True when the two differ by more than :data:`WARN_RATIO` either way."""
        return max(self.ratio, 1.0 / self.ratio) > WARN_RATIO

    def message(self) -> str:
        """One line for the user."""
        return (
            f"The nuclei look {'small' if self.ratio > 1 else 'large'} for {self.given:g} um/px "
            f"(75 % of them under {self.p75_area_um2:.0f} um^2): the image may be at about "
            f"{self.estimate:.2g} um/px ({'20x' if self.estimate > 0.37 else '40x'}-like). "
            "Check the pixel size (--mpp, or the dock's pixel-size field); results at a wrong "
            "pixel size are not reliable."
        )


def estimate_mpp(labels: np.ndarray, mpp: float) -> PixelSizeEstimate | None:
    """Estimate the pixel size of an image from its nuclei labels.

    Args:
        labels: (H, W) int nuclei labels segmented at ``mpp``.
        mpp: pixel size the labels were segmented at.

    Returns:
        :class:`PixelSizeEstimate`, or None with fewer than :data:`MIN_NUCLEI` nuclei.
    """
    counts = np.bincount(np.asarray(labels).ravel())[1:]
    counts = counts[counts > 0]
    if counts.size < MIN_NUCLEI:
        return None
    p75 = float(np.percentile(counts, 75)) * mpp * mpp
    # Areas scale with the square of the pixel size.
    est = mpp * math.sqrt(REFERENCE_P75_AREA_UM2 / p75)
    return PixelSizeEstimate(float(mpp), est, p75, int(counts.size))

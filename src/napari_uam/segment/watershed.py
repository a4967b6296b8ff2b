"""Classical nuclei segmentation: hematoxylin threshold + distance-transform seeded watershed.

Needs no weights. Every parameter is in microns (or square microns) and converted to pixels
with the image's pixel size, so a 20x (0.5 um/px) and a 40x (0.25 um/px) scan of the same
tissue give about the same nuclei.

Steps (each in :func:`segment_watershed`):

1. Hematoxylin optical density by colour deconvolution (:mod:`.stain`), Gaussian smoothing.
2. Foreground: hematoxylin above an Otsu threshold computed on the stained pixels, never below
   an absolute floor, so a blank, white or eosin-only image gives no nuclei instead of
   thresholding noise; and above a fraction of its local mean, which separates nuclei from the
   hematoxylin-tinted cytoplasm around them in dense nests.
3. Morphological opening (removes thin hematoxylin-stained fibres), hole filling, removal of
   fragments smaller than the smallest nucleus.
4. Euclidean distance transform in microns; its regional maxima at least
   ``peak_min_distance_um`` apart seed a watershed that splits touching nuclei.
5. Size filter in square microns, ids relabelled 1..N.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import relabel_sequential, watershed

from ..errors import CancelledError, UAMError
from .stain import hematoxylin


@dataclass(frozen=True)
class WatershedParams:
    """Parameters of the watershed backend, all in physical units.

    Attributes:
        smooth_sigma_um: Gaussian sigma applied to the hematoxylin channel (um).
        threshold_scale: multiplier of the Otsu threshold (below 1 takes paler nuclei).
        min_od: absolute floor of the hematoxylin threshold (optical density); keeps blank and
            nucleus-free images empty.
        local_window_um: side of the window of the local mean (um), about one nucleus and
            its surroundings; 0 turns the local test off.
        local_scale: a pixel must also exceed ``local_scale`` times its local mean; this
            separates nuclei from the hematoxylin-tinted cytoplasm of dense tumor nests, which a
            single global threshold merges into one blob.
        open_radius_um: radius of the morphological opening of the foreground (um).
        peak_min_distance_um: smallest distance between two watershed seeds (um).
        min_peak_depth_um: distance-transform value a seed needs (um); shallower maxima are
            noise on a boundary.
        dist_sigma_um: Gaussian sigma applied to the distance transform before seeding (um).
        min_area_um2: nuclei smaller than this are dropped (um^2).
        max_area_um2: nuclei larger than this are dropped (um^2): merged clumps or
            stained debris, not one nucleus.
    """

    smooth_sigma_um: float = 0.5
    threshold_scale: float = 0.9
    min_od: float = 0.08
    open_radius_um: float = 0.75
    peak_min_distance_um: float = 2.5
    min_peak_depth_um: float = 1.0
    dist_sigma_um: float = 0.5
    local_window_um: float = 10.0
    local_scale: float = 0.9
    min_area_um2: float = 8.0
    max_area_um2: float = 400.0

    @classmethod
    def from_kwargs(cls, **params) -> "WatershedParams":
        """Build parameters from keyword overrides, rejecting unknown names with a clear error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise UAMError(f"Unknown watershed parameter(s) {unknown}; valid ones are {sorted(names)}.")
        out = replace(cls(), **{k: float(v) for k, v in params.items()})
        for k, v in asdict(out).items():
            if not np.isfinite(v) or v < 0:
                raise UAMError(f"Watershed parameter {k}={v} must be a finite number >= 0.")
        return out


def _tissue_threshold(h: np.ndarray, params: WatershedParams) -> float:
    """Otsu threshold of the hematoxylin channel over stained pixels, floored at ``min_od``."""
    stained = h[h > params.min_od * 0.5]
    # Fewer than ~100 stained pixels, or no contrast among them: nothing to split.
    if stained.size < 100 or float(stained.max() - stained.min()) < 1e-3:
        return np.inf
    step = max(1, stained.size // 200_000)
    t = threshold_otsu(stained[::step]) * params.threshold_scale
    return max(float(t), params.min_od)


def foreground(h: np.ndarray, mpp: float, params: WatershedParams) -> np.ndarray:
    """Binary nuclei mask from a hematoxylin channel.

    Args:
        h: (H, W) float hematoxylin optical density.
        mpp: microns per pixel.
        params: thresholds and morphology in microns.

    Returns:
        (H, W) bool mask of nuclear pixels.
    """
    sigma = params.smooth_sigma_um / mpp
    hs = ndi.gaussian_filter(h, sigma) if sigma > 0.3 else h
    t = _tissue_threshold(hs, params)
    if not np.isfinite(t):
        return np.zeros(h.shape, bool)
    mask = hs > t
    if params.local_window_um > 0:
        w = max(3, int(round(params.local_window_um / mpp)))
        mask &= hs > ndi.uniform_filter(hs, w) * params.local_scale
    r = int(round(params.open_radius_um / mpp))
    if r >= 1:
        mask = ndi.binary_opening(mask, structure=disk(r))
    mask = ndi.binary_fill_holes(mask)
    return mask


def split_touching(mask: np.ndarray, mpp: float, params: WatershedParams) -> np.ndarray:
    """Split a nuclei mask into instances with a distance-transform seeded watershed.

    Args:
        mask: (H, W) bool nuclei mask.
        mpp: microns per pixel.
        params: seed spacing and depth in microns.

    Returns:
        (H, W) int32 instance map (ids not necessarily consecutive).
    """
    comps, n = ndi.label(mask)
    if n == 0:
        return comps.astype(np.int32)
    dist = ndi.distance_transform_edt(mask) * mpp
    s = params.dist_sigma_um / mpp
    if s > 0.3:
        dist = ndi.gaussian_filter(dist, s)
    min_px = max(1, int(round(params.peak_min_distance_um / mpp)))
    peaks = peak_local_max(
        dist,
        min_distance=min_px,
        threshold_abs=params.min_peak_depth_um,
        labels=comps,
        exclude_border=False,
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A component without a seed (too thin for min_peak_depth) still becomes one nucleus.
    seeded = np.zeros(n + 1, bool)
    seeded[comps[peaks[:, 0], peaks[:, 1]]] = True
    orphan = ~seeded[comps] & mask
    markers[orphan] = comps[orphan] + len(peaks)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


def filter_sizes(labels: np.ndarray, mpp: float, params: WatershedParams) -> np.ndarray:
    """Drop instances outside [min_area_um2, max_area_um2] and relabel the rest 1..N.

    Args:
        labels: (H, W) int instance map.
        mpp: microns per pixel.
        params: area bounds in um^2.

    Returns:
        (H, W) int32 instance map with consecutive ids.
    """
    area_um2 = np.bincount(labels.ravel()) * (mpp * mpp)
    keep = (area_um2 >= params.min_area_um2) & (area_um2 <= params.max_area_um2)
    keep[0] = False
    out = np.where(keep[labels], labels, 0)
    return relabel_sequential(out)[0].astype(np.int32)


def segment_watershed(
    image: np.ndarray,
    mpp: float,
    params: WatershedParams | None = None,
    progress: Callable[[float, str], None] | None = None,
    *,
    white: np.ndarray | None = None,
    threshold: float | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Segment nuclei in an RGB uint8 H&E image without learned weights.

    Args:
        image: (H, W, 3) uint8 RGB (already validated).
        mpp: microns per pixel (> 0).
        params: :class:`WatershedParams`; defaults when None.
        progress: optional callback ``progress(fraction, message)``.
        white: (3,) white level per channel instead of the one estimated from ``image``.
        threshold: hematoxylin threshold (optical density, after ``threshold_scale``) instead
            of the one estimated from ``image``. A tile of a large image passes the whole
            image's two levels so that every tile segments alike.
        cancel: optional ``cancel() -> bool`` polled between the steps; True raises
            :class:`~napari_uam.errors.CancelledError`.

    Returns:
        (H, W) int32 instance labels, 0 background, ids 1..N.
    """
    params = params or WatershedParams()
    quiet = progress or (lambda f, m: None)

    def report(fraction, message):
        if cancel is not None and cancel():
            raise CancelledError("Segmentation cancelled; no result was produced.")
        quiet(fraction, message)

    report(0.0, "colour deconvolution")
    h = hematoxylin(image, None if white is None else np.asarray(white, np.float32))
    report(0.2, "thresholding hematoxylin")
    # threshold_scale 0 with min_od = threshold makes foreground() use exactly ``threshold``.
    fixed = params if threshold is None else replace(params, threshold_scale=0.0, min_od=float(threshold))
    mask = foreground(h, mpp, fixed)
    # Fragments below the smallest nucleus would only create spurious seeds.
    min_px = params.min_area_um2 / (mpp * mpp)
    comps, _ = ndi.label(mask)
    small = np.bincount(comps.ravel()) < min_px
    small[0] = False
    mask &= ~small[comps]
    report(0.5, "splitting touching nuclei")
    labels = split_touching(mask, mpp, params)
    report(0.9, "size filter")
    labels = filter_sizes(labels, mpp, params)
    report(1.0, f"{int(labels.max())} nuclei")
    return labels

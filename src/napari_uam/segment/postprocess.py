"""From the network's per-pixel maps to nuclei instances: marker-controlled watershed.

Inputs are the activated maps of :mod:`.unet` at the network's pixel size: foreground
probability, HoVer horizontal / vertical maps and the normalised distance to the border.

Steps (each in :func:`instances`):

1. Foreground: probability above ``fg_threshold``, holes filled, specks removed.
2. Markers: the core of each nucleus, where the (lightly smoothed) normalised distance is above
   ``marker_threshold`` *and* the HoVer "energy" is low. The energy is how fast h decreases
   along x (or v along y): inside a nucleus both increase steadily, across the line where two
   touching nuclei meet they jump from +1 to -1, so a high energy cuts cores that the distance
   map alone would join.
3. Watershed of the negated distance from the markers, inside the foreground; a foreground
   component without a marker (a nucleus too thin for one) becomes a nucleus of its own.
4. Size filter.

Every operation is local (no per-image normalisation such as HoVer-Net's min-max of the Sobel
maps), so the result on a tile interior does not depend on what else is in the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from ..errors import CancelledError, UAMError


@dataclass(frozen=True)
class PostParams:
    """Post-processing parameters; lengths and areas in microns at the maps' pixel size.

    Attributes:
        fg_threshold: foreground probability above which a pixel is nuclear.
        marker_threshold: normalised distance (0 border, 1 centre) above which a pixel is part
            of a nucleus' core.
        energy_threshold: HoVer energy (decrease of h per pixel along x, or of v along y)
            above which a pixel is on a line between two nuclei and cannot be a marker;
            values >= 2 turn the test off.
        smooth_sigma_um: Gaussian sigma applied to the distance and HoVer maps (um).
        marker_min_area_um2: cores smaller than this are noise, not a nucleus (um^2).
        min_area_um2: nuclei smaller than this are dropped (um^2).
    """

    fg_threshold: float = 0.5
    marker_threshold: float = 0.45
    energy_threshold: float = 0.35
    smooth_sigma_um: float = 0.25
    marker_min_area_um2: float = 0.75
    min_area_um2: float = 3.0

    @classmethod
    def from_kwargs(cls, base: "PostParams | None" = None, **params) -> "PostParams":
        """Parameters from keyword overrides of ``base`` (defaults when None).

        Raises:
            UAMError: an unknown name or a negative / non-finite value.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise UAMError(
                f"Unknown learned-backend parameter(s) {unknown}; valid ones are "
                f"{sorted(names | {'device', 'tile_px'})}."
            )
        out = replace(base or cls(), **{k: float(v) for k, v in params.items()})
        for k, v in asdict(out).items():
            if not np.isfinite(v) or v < 0:
                raise UAMError(f"Learned-backend parameter {k}={v} must be a finite number >= 0.")
        return out


def hover_energy(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """How fast the HoVer maps fall along their own axis, per pixel.

    Args:
        h: (H, W) horizontal map in [-1, 1] (grows left to right inside each nucleus).
        v: (H, W) vertical map in [-1, 1] (grows top to bottom inside each nucleus).

    Returns:
        (H, W) float32 ``max(-dh/dx, -dv/dy, 0)``: about 0 inside nuclei, ~1 on the line
        between two touching nuclei.
    """
    # Central differences; a decrease is what marks a border between nuclei.
    dh = np.zeros_like(h)
    dv = np.zeros_like(v)
    dh[:, 1:-1] = (h[:, 2:] - h[:, :-2]) * 0.5
    dv[1:-1, :] = (v[2:, :] - v[:-2, :]) * 0.5
    return np.maximum(np.maximum(-dh, -dv), 0.0).astype(np.float32)


def instances(maps: np.ndarray, mpp: float, params: PostParams | None = None, cancel=None) -> np.ndarray:
    """Nuclei instances from the network's maps.

    Args:
        maps: (4, H, W) float activated maps (foreground probability, h, v, distance).
        mpp: microns per pixel of the maps (the network's pixel size).
        params: :class:`PostParams`; defaults when None.
        cancel: optional ``cancel() -> bool`` polled between the steps (on a large image each
            takes a second or more); True raises :class:`~napari_uam.errors.CancelledError`.

    Returns:
        (H, W) int32 labels, 0 background, ids 1..N.
    """

    def check():
        if cancel is not None and cancel():
            raise CancelledError("Segmentation cancelled; no result was produced.")

    p = params or PostParams()
    prob, h, v, dist = (np.asarray(m, np.float32) for m in maps)
    px_area = mpp * mpp
    fg = prob > p.fg_threshold
    fg = ndi.binary_fill_holes(fg)
    comps, n = ndi.label(fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    small = np.bincount(comps.ravel()) * px_area < p.min_area_um2
    small[0] = False
    fg &= ~small[comps]
    check()

    sigma = p.smooth_sigma_um / mpp
    if sigma > 0.3:
        dist = ndi.gaussian_filter(dist, sigma)
        check()
        h = ndi.gaussian_filter(h, sigma)
        v = ndi.gaussian_filter(v, sigma)
        check()
    core = fg & (dist > p.marker_threshold)
    if p.energy_threshold < 2.0:
        core &= hover_energy(h, v) < p.energy_threshold
    markers, nm = ndi.label(core)
    if nm:
        tiny = np.bincount(markers.ravel()) * px_area < p.marker_min_area_um2
        tiny[0] = False
        markers[tiny[markers]] = 0
    # A foreground component left without a marker still becomes one nucleus.
    comps, n = ndi.label(fg)
    seeded = np.zeros(n + 1, bool)
    seeded[comps[markers > 0]] = True
    orphan = fg & ~seeded[comps]
    markers = np.where(orphan, comps + int(markers.max()), markers).astype(np.int32)
    check()
    labels = watershed(-dist, markers, mask=fg)
    check()

    area = np.bincount(labels.ravel()) * px_area
    keep = area >= p.min_area_um2
    keep[0] = False
    labels = np.where(keep[labels], labels, 0)
    return relabel_sequential(labels)[0].astype(np.int32)

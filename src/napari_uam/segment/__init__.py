"""Nuclei instance segmentation of H&E images behind one function, :func:`segment`.

Backends are registered by name. "watershed" (classical, no weights) is always available;
a learned backend registers itself with :func:`register_backend` together with a check that
its weights load, and "auto" then picks it. Callers (pipeline, widgets, command line) record
which backend ran with :func:`resolve_backend`.

Example:
    >>> labels = segment(image, mpp=0.5)              # (H, W) int32, ids 1..N
    >>> resolve_backend("auto")                        # e.g. "watershed"
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import CancelledError, UAMError
from ..pixel_size import check_mpp
from ..validation import as_rgb_uint8
from .watershed import WatershedParams, segment_watershed

#: Where "auto" may pick a backend: (low, high) um/px, None for any pixel size, or "never".
MppRange = "tuple[float, float] | None | str"

#: Signature of a backend: ``fn(image (H, W, 3) uint8, mpp, progress, **params) -> (H, W) labels``.
BackendFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Backend:
    """A registered segmentation backend.

    Attributes:
        name: registry key, e.g. "watershed".
        run: the segmentation function (see :data:`BackendFn`).
        is_available: returns True when the backend can run here (weights found, package
            installed); checked each time so installing weights needs no restart.
        priority: "auto" picks the available backend of highest priority.
        reason: optional; returns why the backend is unavailable (for error messages).
        mpp_range: (low, high) pixel sizes in um/px where the backend was validated; "auto"
            only picks it for images in that range (None: any pixel size; "never": "auto"
            never picks it). May be a function returning one of those, read at each call
            (the learned backend's range is recorded in its weights file).
    """

    name: str
    run: BackendFn
    is_available: Callable[[], bool]
    priority: int
    reason: Callable[[], str | None] | None = None
    mpp_range: "MppRange | Callable[[], MppRange]" = None

    def suits(self, mpp: float | None) -> bool:
        """Whether "auto" may pick this backend for an image of ``mpp`` um/px."""
        rng = self.mpp_range() if callable(self.mpp_range) else self.mpp_range
        if rng == "never":
            return False
        return mpp is None or rng is None or rng[0] <= mpp <= rng[1]


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    run: BackendFn,
    is_available: Callable[[], bool] = lambda: True,
    priority: int = 0,
    reason: Callable[[], str | None] | None = None,
    mpp_range: "MppRange | Callable[[], MppRange]" = None,
) -> None:
    """Register (or replace) a segmentation backend.

    Args:
        name: backend name used in ``segment(..., backend=name)``; "auto" is reserved.
        run: ``run(image, mpp, progress=None, **params) -> (H, W) int labels``; ``image`` is an
            (H, W, 3) uint8 RGB array already validated.
        is_available: cheap check that the backend can run (weights present, imports work).
        priority: higher wins when ``backend="auto"`` (watershed has 0; a learned one > 0).
        reason: optional ``reason() -> str | None`` explaining why the backend is unavailable
            (e.g. "weights truncated"); shown when a caller asks for it by name.
        mpp_range: pixel sizes (um/px) where the backend was validated, or a function
            returning them (see :class:`Backend`); "auto" picks it only for images in that
            range. A name given explicitly runs at any pixel size.
    """
    if name == "auto":
        raise ValueError('"auto" is reserved for picking the best available backend.')
    _BACKENDS[name] = Backend(name, run, is_available, priority, reason, mpp_range)


def _run_watershed(image, mpp, progress=None, cancel=None, **params) -> np.ndarray:
    return segment_watershed(image, mpp, WatershedParams.from_kwargs(**params), progress, cancel=cancel)


register_backend("watershed", _run_watershed, priority=0)

# The learned backend imports torch only when it runs or its weights are checked, so the
# watershed-only paths stay light; without its weights "auto" falls back to the watershed.
from .learned import auto_mpp_range as _learned_auto_range  # noqa: E402
from .learned import is_available as _learned_available  # noqa: E402
from .learned import segment_learned, unavailable_reason  # noqa: E402

# Where "auto" may pick the network is decided by its held-out numbers and stored with its
# weights (``auto_mpp_range``, written by ``research/segmentation/train_learned.py``): any pixel size only when it meets
# the 40x targets on CoNSeP 21-27 *and* detects BRCA-M2C val cells (20x) at least as well as
# the watershed; 40x-like images (0.2-0.35 um/px) when it meets the 40x targets only (weights
# recording nothing get this too: the first network over-split 20x breast fields, point F1
# 0.70 vs 0.84). Asking for "learned" by name still runs it at any scale.
register_backend(
    "learned",
    segment_learned,
    _learned_available,
    priority=10,
    reason=unavailable_reason,
    mpp_range=_learned_auto_range,
)


def _accepts_device(fn, name: str = "device") -> bool:
    """Whether a backend function takes keyword ``name`` (``device``: networks do, the watershed not)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def backend_unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here (None when it can, or when it gives no reason)."""
    b = _BACKENDS.get(name)
    if b is None:
        return f"unknown backend {name!r}"
    if b.is_available():
        return None
    return b.reason() if b.reason else None


def available_backends() -> list[str]:
    """Names of the backends that can run here, best first (the first is what "auto" picks)."""
    ok = [b for b in _BACKENDS.values() if b.is_available()]
    return [b.name for b in sorted(ok, key=lambda b: -b.priority)]


def resolve_backend(name: str = "auto", mpp: float | None = None) -> str:
    """Name of the backend that ``segment(..., backend=name)`` runs.

    Args:
        name: a registered backend name, or "auto" for the best available one.
        mpp: the image's pixel size; with "auto", only backends validated at that pixel size
            are candidates (see :class:`Backend`).

    Returns:
        str: the concrete backend name.

    Raises:
        UAMError: the name is unknown or that backend cannot run here; the message lists the
            available backends.
    """
    available = available_backends()
    if name == "auto":
        suited = [n for n in available if _BACKENDS[n].suits(mpp)]
        return (suited or available)[0]
    if name not in _BACKENDS:
        raise UAMError(f"Unknown segmentation backend {name!r}; available: {', '.join(['auto', *available])}.")
    if name not in available:
        why = backend_unavailable_reason(name) or "weights or package missing"
        raise UAMError(
            f"Segmentation backend {name!r} is not available here ({why}); "
            f"available: {', '.join(['auto', *available])}."
        )
    return name


def segment(
    image,
    mpp: float,
    backend: str = "auto",
    progress: Callable[[float, str], None] | None = None,
    device: str | None = None,
    return_backend: bool = False,
    cancel: Callable[[], bool] | None = None,
    **params,
):
    """Segment nuclei in an RGB H&E image.

    Args:
        image: (H, W, 3) RGB array (uint8 preferred; anything
            :func:`napari_uam.validation.as_rgb_uint8` accepts).
        mpp: microns per pixel of ``image`` (0.25 at 40x, 0.5 at 20x).
        backend: "auto" (best available, see :func:`available_backends`) or a backend name.
        progress: optional callback ``progress(fraction in [0, 1], message)``.
        device: "auto", "cpu" or "cuda" for backends that run a network (the learned one);
            ignored by the others. None keeps the backend's own default.
        return_backend: also return the name of the backend whose labels are returned
            (with ``backend="auto"`` that can be the watershed fallback, see below).
        cancel: optional ``cancel() -> bool``; passed to backends that take it (the learned
            one polls it per tile and inside the network, the watershed between its steps)
            and checked after the backend returns.
        **params: backend parameters in physical units, e.g. ``min_area_um2=10`` for
            "watershed" (see :class:`napari_uam.segment.watershed.WatershedParams`).

    With ``backend="auto"`` the learned network runs whenever its weights load; when they do
    not, the classical watershed runs instead and a :class:`SegmentationFallbackWarning` says
    so. (Earlier versions also swapped in the watershed when the network found few nuclei:
    that ran exactly on inputs where finding nothing was right, e.g. noise. Inputs that are
    not H&E tissue are now refused up front: :func:`napari_uam.validation.check_he_tissue`.)

    Returns:
        np.ndarray: (H, W) int32 instance labels, 0 = background, nuclei numbered 1..N
        (``(labels, backend_name)`` when ``return_backend``).
        An image without nuclei gives all zeros (the caller decides whether that is an error,
        e.g. by raising :class:`napari_uam.errors.NoNucleiError`).

    Raises:
        InvalidImageError: the image is not a usable RGB image or ``mpp`` is not positive.
        UAMError: unknown or unavailable backend, or unknown parameters.
        CancelledError: ``cancel()`` returned True.
    """
    rgb = as_rgb_uint8(image)
    mpp = check_mpp(mpp)
    name = resolve_backend(backend, mpp)
    run = _BACKENDS[name].run
    if device is not None and _accepts_device(run):
        params = {**params, "device": device}
    if cancel is not None and _accepts_device(run, "cancel"):
        params = {**params, "cancel": cancel}
    if backend == "auto" and name == "watershed" and "learned" in _BACKENDS:
        why = backend_unavailable_reason("learned") or "not validated at this pixel size"
        warnings.warn(
            f"The learned nuclei segmenter is not available ({why}); the classical watershed "
            "runs instead, which is less accurate.",
            SegmentationFallbackWarning,
            stacklevel=2,
        )
    labels = np.asarray(run(rgb, mpp, progress=progress, **params))
    if cancel is not None and cancel():
        raise CancelledError("Segmentation cancelled; no result was produced.")
    if labels.shape != rgb.shape[:2]:
        raise UAMError(f"Backend {name!r} returned labels of shape {labels.shape} for an image of {rgb.shape[:2]}.")
    # Backends may leave gaps in ids (size filters); the contract is 1..N consecutive.
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size and ids[-1] != ids.size:
        lut = np.zeros(int(ids[-1]) + 1, np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        labels = lut[labels]
    labels = labels.astype(np.int32, copy=False)
    return (labels, name) if return_backend else labels


class SegmentationFallbackWarning(UserWarning):
    """``auto`` ran the classical watershed because the learned backend cannot run here."""


__all__ = [
    "Backend",
    "SegmentationFallbackWarning",
    "WatershedParams",
    "available_backends",
    "backend_unavailable_reason",
    "register_backend",
    "resolve_backend",
    "segment",
]

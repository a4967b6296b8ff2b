"""Whole-slide files through OpenSlide: which files it reads, their size and pixel size, and
lazy regions of level 0.

Vendor formats (Aperio SVS, Hamamatsu NDPI/VMS/VMU, 3DHISTECH MRXS, Leica SCN, Ventana BIF,
Philips TIFF) are read by OpenSlide; OME-TIFF and plain (pyramidal) TIFF stay with
tifffile (:mod:`.reader`, :mod:`.region_reader`), which reads them without a C library and
byte for byte as before. OpenSlide is optional at run time: it is imported only when a file
needs it, and a vendor file without it gets a message saying what to install.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..errors import InvalidImageError
from ..pixel_size import mpp_from_resolution, plausible

#: Suffixes of the vendor formats OpenSlide reads (``.tif``/``.tiff`` may be vendor files too:
#: Philips TIFF, an Aperio file renamed; :func:`uses_openslide` asks OpenSlide about those).
VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
#: Vendor files that tifffile reads as well, so they still open without OpenSlide.
TIFFFILE_READS = (".svs",)
#: OpenSlide's format names that are not a vendor format: tifffile reads these itself.
_GENERIC = (None, "generic-tiff")

INSTALL_HINT = "pip install openslide-bin openslide-python"


def openslide_module(name: str = "this slide"):
    """The ``openslide`` module, imported on first use (a C library: only slides need it).

    Raises:
        InvalidImageError: OpenSlide is not installed, with the command that installs it.
    """
    try:
        import openslide
    except (ImportError, OSError) as err:  # OSError: the Python binding without its library
        raise InvalidImageError(
            f"Reading {name} needs OpenSlide, which is not installed ({type(err).__name__}: {err}). "
            f"Install it with `{INSTALL_HINT}`, or convert the slide to OME-TIFF (e.g. with QuPath or bfconvert)."
        ) from err
    return openslide


def _mtime(path: str) -> int:
    return os.stat(path).st_mtime_ns


def uses_openslide(path) -> bool:
    """Whether ``path`` is read through OpenSlide rather than tifffile / Pillow.

    Vendor suffixes go to OpenSlide (an ``.svs`` falls back to tifffile when OpenSlide is
    missing); a ``.tif``/``.tiff`` only when OpenSlide recognises a vendor format in it, so
    a generic tiled TIFF or OME-TIFF reads exactly as before.

    Raises:
        InvalidImageError: a vendor file that only OpenSlide reads, and OpenSlide is missing.
    """
    p = str(path)
    low = p.lower()
    if low.endswith((".ome.tif", ".ome.tiff")) or not low.endswith((*VENDOR_SUFFIXES, ".tif", ".tiff")):
        return False
    vendor = low.endswith(VENDOR_SUFFIXES)
    if not vendor or low.endswith(TIFFFILE_READS):
        try:
            openslide_module()
        except InvalidImageError:
            return False
    else:
        openslide_module(Path(p).name)
    if not os.path.isfile(p):
        return False
    fmt = _detect(p, _mtime(p))
    return fmt is not None if vendor else fmt not in _GENERIC


@functools.lru_cache(maxsize=64)
def _detect(path: str, mtime: int) -> Optional[str]:
    # Cached per file version: every tile of a slide asks which reader it needs.
    return openslide_module().OpenSlide.detect_format(path)


@functools.lru_cache(maxsize=4)
def _open(path: str, mtime: int):
    # One handle per slide and process: opening parses the whole file index (seconds for a
    # large MRXS), and OpenSlide's reads are thread-safe.
    openslide = openslide_module(Path(path).name)
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideError as err:
        raise InvalidImageError(f"Could not read {Path(path).name} with OpenSlide: {err}") from err


def open_slide(path):
    """The cached ``openslide.OpenSlide`` of ``path``."""
    p = str(path)
    return _open(p, _mtime(p))


@dataclass(frozen=True)
class SlideInfo:
    """What the header of a slide says.

    Attributes:
        height, width: level 0 in pixels.
        mpp: microns per pixel of level 0, or None when the slide does not say.
        vendor: OpenSlide's format name (``aperio``, ``hamamatsu``, ``mirax``, ...).
        levels: (height, width) of every pyramid level, level 0 first.
        downsamples: each level's downsample factor from level 0.
    """

    height: int
    width: int
    mpp: Optional[float]
    vendor: Optional[str]
    levels: tuple
    downsamples: tuple


def slide_info(path) -> SlideInfo:
    """Size, pixel size and pyramid of a slide, without decoding pixels."""
    s = open_slide(path)
    w, h = s.dimensions
    return SlideInfo(
        height=int(h),
        width=int(w),
        mpp=mpp_from_properties(s.properties),
        vendor=s.properties.get("openslide.vendor"),
        levels=tuple((int(lh), int(lw)) for lw, lh in s.level_dimensions),
        downsamples=tuple(float(d) for d in s.level_downsamples),
    )


def mpp_from_properties(props: Mapping[str, str]) -> Optional[float]:
    """Microns per pixel from a slide's properties, or None.

    In order: OpenSlide's own ``openslide.mpp-x`` (it reads each vendor's field), Aperio's
    ``aperio.MPP``, then the TIFF resolution tags (centimetre or inch). Only values in the
    accepted range count: a scanner's placeholder (0, 1 dpi) is no pixel size.
    """
    for key in ("openslide.mpp-x", "aperio.MPP"):
        mpp = _number(props.get(key))
        if mpp is not None and plausible(mpp):
            return mpp
    return mpp_from_resolution(props.get("tiff.XResolution"), str(props.get("tiff.ResolutionUnit", "")))


def _number(value) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def read_region(path, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` of level 0 as (h, w, 3) uint8 RGB, decoding only what they overlap.

    OpenSlide returns RGBA with transparent pixels where nothing was scanned (MRXS gaps,
    outside a slide's bounds); they are composited on white, the colour of glass, so that they
    read as background and not as black (which the tissue checks would take for ink).
    """
    img = open_slide(path).read_region((int(x0), int(y0)), 0, (int(x1 - x0), int(y1 - y0)))
    return composite_on_white(np.asarray(img))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) non-premultiplied RGBA uint8 -> (h, w, 3) RGB uint8 over white."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    a = rgba[..., 3:4].astype(np.uint16)
    if bool((a == 255).all()):
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


__all__ = [
    "INSTALL_HINT",
    "SlideInfo",
    "VENDOR_SUFFIXES",
    "composite_on_white",
    "mpp_from_properties",
    "open_slide",
    "openslide_module",
    "read_region",
    "slide_info",
    "uses_openslide",
]

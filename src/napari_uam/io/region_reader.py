"""Reading large images lazily: their size and pixel size without decoding (:func:`probe`), and
regions of them (:class:`RegionReader`: vendor slides through OpenSlide, tiled TIFF pages by
tile, other files decoded once and cached), for the tiled path (:mod:`napari_uam.batch.tiles`)."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tifffile
from PIL import Image

from ..errors import InvalidImageError
from ..pixel_size import mpp_from_dpi
from . import slide
from .pyramid import decode_tiles
from .reader import (
    PIL_SUFFIXES,
    TIFF_SUFFIXES,
    UNSUPPORTED,
    _mpp_from_tiff,
    channels_last,
    is_channels_first,
    largest_level,
)


# --------------------------------------------------------------------------------- reading
def probe(path) -> tuple[int, int, Optional[float]]:
    """Height, width and pixel size of an image file, without decoding its pixels.

    Raises:
        InvalidImageError: the file cannot be opened as an image.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if slide.uses_openslide(path):
            info = slide.slide_info(path)
            return info.height, info.width, info.mpp
        if name.endswith(TIFF_SUFFIXES):
            with tifffile.TiffFile(path) as tif:
                shape = largest_level(tif).shape
                mpp = _mpp_from_tiff(tif)
            dims = list(shape)
            if is_channels_first(dims):
                dims = dims[1:]
            return int(dims[0]), int(dims[1]), mpp
        if name.endswith(PIL_SUFFIXES):
            # Only the header is read; a file too large for Pillow's default limit is what the
            # tiled path is for, so the limit is lifted for this open alone.
            with _pil_pixel_limit_off(), Image.open(path) as im:
                # As read_image: only microscope-scale dpi is a pixel size.
                return int(im.size[1]), int(im.size[0]), mpp_from_dpi(im.info.get("dpi"))
    except InvalidImageError:
        raise
    except Exception as err:
        raise InvalidImageError(f"Could not read {path.name}: {type(err).__name__}: {err}") from err
    raise InvalidImageError(f"{path.name}: {UNSUPPORTED}")


@contextlib.contextmanager
def _pil_pixel_limit_off():
    """Lift Pillow's decompression-bomb limit for the ``with`` block only, then restore it.

    The caller chose to process this file in tiles, so its size is intended; but the limit is
    a process-wide setting, and leaving it off would let any later image opened in this
    process (napari, another plugin, a batch's next file) decode unchecked.
    """
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


@functools.lru_cache(maxsize=1)
def _whole(path: str, mtime: int) -> np.ndarray:
    # PNG/JPEG and TIFF layouts without random access are decoded once per process.
    if path.lower().endswith((".png", ".jpg", ".jpeg")):
        with _pil_pixel_limit_off(), Image.open(path) as im:
            return np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im)
    with tifffile.TiffFile(path) as tif:
        data = largest_level(tif).asarray()
    return channels_last(data)


@dataclass(frozen=True)
class RegionReader:
    """Reads rectangular regions of one image file, decoding only what a region overlaps.

    Picklable (it holds only the path), so Dask workers each open the file themselves.

    Attributes:
        path: image file. A vendor slide is read through OpenSlide (level 0, RGB over
            white); an uncompressed TIFF is memory-mapped; a tiled or striped compressed TIFF
            (RGB, interleaved) is read segment by segment; anything else (PNG, JPEG, planar
            TIFF) is decoded whole once per process.
    """

    path: str

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels ``[y0:y1, x0:x1]`` as stored, (h, w, C)."""
        p = self.path
        if slide.uses_openslide(p):
            return slide.read_region(p, y0, y1, x0, x1)
        if p.lower().endswith((".tif", ".tiff", ".svs")):
            out = _read_tiff_region(p, y0, y1, x0, x1)
            if out is not None:
                return out
        return np.array(_whole(p, os.stat(p).st_mtime_ns)[y0:y1, x0:x1])


def _read_tiff_region(path: str, y0: int, y1: int, x0: int, x1: int) -> Optional[np.ndarray]:
    """Region of the first page of a TIFF, or None when its layout needs a whole read."""
    with tifffile.TiffFile(path) as tif:
        level = largest_level(tif)
        if len(level.pages) != 1 or level.pages[0] is None:
            return None
        page = level.pages[0]
        if page.planarconfig != 1 or page.imagedepth != 1 or page.ndim != 3:
            return None
        if page.is_memmappable:
            mm = tifffile.memmap(path, page=page.index, mode="r")
            return np.array(mm[y0:y1, x0:x1])
        return decode_tiles(tif, page, y0, y1, x0, x1)

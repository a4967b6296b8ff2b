"""A slide as napari shows it: every pyramid level of the file as a lazy Dask array, read one
chunk at a time when napari draws it, so a 2 x 2 cm slide opens in a second and never sits in
memory whole.

Levels come from the file: OpenSlide's pyramid for vendor slides, the TIFF series' levels
(SubIFDs or pages) for pyramidal TIFF / OME-TIFF. Pixels are RGB uint8 as the pipeline reads
them (OpenSlide's transparent background composited on white).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tifffile

from ..errors import InvalidImageError
from . import slide
from .reader import _mpp_from_tiff, channels_last, is_channels_first

#: Side of a chunk napari fetches (and of the blocks a region read decodes).
CHUNK = 1024


@dataclass(frozen=True)
class Pyramid:
    """The levels of one file: (height, width) of each, level 0 first; mpp of level 0."""

    path: str
    shapes: tuple
    mpp: Optional[float]

    @property
    def downsamples(self) -> tuple:
        h0 = self.shapes[0][0]
        return tuple(h0 / s[0] for s in self.shapes)


def _tiff_levels(tif) -> list:
    series = tif.series[0]
    return list(series.levels) if getattr(series, "levels", None) else [series]


def _rgb_shape(shape) -> tuple[int, int]:
    if is_channels_first(shape):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def open_pyramid(path) -> Pyramid:
    """The pyramid of a slide or TIFF file, from its header only."""
    p = str(path)
    if slide.uses_openslide(p):
        info = slide.slide_info(p)
        return Pyramid(p, tuple(info.levels), info.mpp)
    if not p.lower().endswith((".tif", ".tiff", ".svs")):
        raise InvalidImageError(f"{Path(p).name}: only slides and TIFF files open as pyramids.")
    with tifffile.TiffFile(p) as tif:
        levels = _tiff_levels(tif)
        shapes = []
        for level in levels:
            if len(level.shape) != 3:
                raise InvalidImageError(f"{Path(p).name} is not an RGB image (shape {level.shape}).")
            shapes.append(_rgb_shape(level.shape))
        return Pyramid(p, tuple(shapes), _mpp_from_tiff(tif))


def read_level_region(pyr: Pyramid, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` of ``level`` (in that level's pixels) as (h, w, 3) uint8."""
    p = pyr.path
    if slide.uses_openslide(p):
        ds = pyr.downsamples[level]
        # OpenSlide takes the location in level-0 pixels and the size in the level's.
        img = slide.open_slide(p).read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0))
        return slide.composite_on_white(np.asarray(img))
    with tifffile.TiffFile(p) as tif:
        lvl = _tiff_levels(tif)[level]
        page = lvl.pages[0] if len(lvl.pages) == 1 else None
        if page is not None and page.planarconfig == 1 and page.imagedepth == 1 and page.ndim == 3:
            return np.ascontiguousarray(decode_tiles(tif, page, y0, y1, x0, x1)[..., :3])
        data = channels_last(lvl.asarray())
    return np.ascontiguousarray(data[y0:y1, x0:x1, :3])


def decode_tiles(tif, page, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``[y0:y1, x0:x1]`` of a chunked (tiled or striped), interleaved TIFF ``page`` of the open
    ``tif`` as stored (h, w, samples), decoding only the chunks the region overlaps."""
    ch, cw = int(page.chunks[0]), int(page.chunks[1])
    ny, nx = int(page.chunked[0]), int(page.chunked[1])
    out = np.zeros((y1 - y0, x1 - x0, page.samplesperpixel), page.dtype)
    fh = tif.filehandle
    for iy in range(y0 // ch, min(ny, (y1 - 1) // ch + 1)):
        for ix in range(x0 // cw, min(nx, (x1 - 1) // cw + 1)):
            k = iy * nx + ix
            fh.seek(page.dataoffsets[k])
            seg, _, _ = page.decode(fh.read(page.databytecounts[k]), k, jpegtables=page.jpegtables)
            seg = np.asarray(seg).reshape(seg.shape[-3:])
            sy, sx = iy * ch, ix * cw
            a0, a1 = max(y0, sy), min(y1, sy + seg.shape[0], page.imagelength)
            b0, b1 = max(x0, sx), min(x1, sx + seg.shape[1], page.imagewidth)
            out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = seg[a0 - sy : a1 - sy, b0 - sx : b1 - sx]
    return out


def _sizes(n: int, chunk: int) -> tuple:
    return tuple(min(chunk, n - i) for i in range(0, n, chunk))


def lazy_levels(pyr: Pyramid, chunk: int = CHUNK) -> list:
    """Every level as a Dask array (h, w, 3) uint8 whose chunks are read when computed."""
    import dask.array as da  # heavy: napari's reader imports this module

    arrays = []
    for level, (h, w) in enumerate(pyr.shapes):

        def block(block_info=None, level=level):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            return read_level_region(pyr, level, y0, y1, x0, x1)

        arrays.append(da.map_blocks(block, dtype=np.uint8, chunks=(_sizes(h, chunk), _sizes(w, chunk), (3,))))
    return arrays


def lazy_label_levels(path, chunk: int = CHUNK) -> list:
    """Every level of a single-channel pyramidal TIFF (a slide's labels as the tiled path writes
    them, reduced levels in SubIFDs) as lazy Dask arrays, read tile by tile."""
    import dask.array as da  # heavy

    p = str(path)
    with tifffile.TiffFile(p) as tif:
        levels = _tiff_levels(tif)
        shapes = [tuple(int(v) for v in level.shape[:2]) for level in levels]
        dtype = levels[0].dtype

    def block(level, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        with tifffile.TiffFile(p) as tif:
            page = _tiff_levels(tif)[level].pages[0]
            return decode_tiles(tif, page, y0, y1, x0, x1)[..., 0]

    return [
        da.map_blocks(block, level, dtype=dtype, chunks=(_sizes(h, chunk), _sizes(w, chunk)))
        for level, (h, w) in enumerate(shapes)
    ]


__all__ = ["CHUNK", "Pyramid", "lazy_levels", "open_pyramid", "decode_tiles", "lazy_label_levels", "read_level_region"]

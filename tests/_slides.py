"""Slide-like files the tests make themselves: an SVS-style tiled TIFF (Aperio's description,
OpenSlide reads it) and a generic pyramidal tiled TIFF (levels as SubIFDs or pages)."""

from __future__ import annotations

import numpy as np
import tifffile

APERIO = "Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (256x256) RGB|AppMag = 40|MPP = {mpp:.4f}"


def write_svs(path, img: np.ndarray, mpp: float = 0.252) -> None:
    """An SVS-style slide: tiled level 0 with Aperio's description, and a 4x-reduced level."""
    h, w = img.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        kw = {"tile": (256, 256), "compression": "zlib", "photometric": "rgb", "metadata": None}
        tw.write(img, description=APERIO.format(w=w, h=h, mpp=mpp), **kw)
        tw.write(img[::4, ::4], subfiletype=1, **kw)


def write_pyramid(path, img: np.ndarray, mpp: float = 0.5, subifds: bool = True) -> None:
    """A generic pyramidal tiled TIFF with resolution tags: levels as SubIFDs or as pages."""
    kw = {"tile": (128, 128), "compression": "zlib", "photometric": "rgb"}
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, subifds=2 if subifds else None, **kw, **res)
        for f in (2, 4):
            tw.write(img[::f, ::f], subfiletype=1, **kw)

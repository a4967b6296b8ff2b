"""Reading H&E patches: TIFF family through tifffile, vendor slides through OpenSlide
(:mod:`.slide`), PNG/JPEG through Pillow.

The microns-per-pixel of the image is read from the file where it says so (OME physical
size, Aperio SVS ``MPP =`` description, TIFF resolution tags in cm or inch, a slide's
OpenSlide properties) and returned with the pixels, so the pipeline and napari know the scale.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import tifffile
from PIL import Image

from .. import validation  # the module: MAX_PIXELS is read at call time (tests lower it)
from ..errors import InvalidImageError
from ..pixel_size import mpp_from_dpi, mpp_from_resolution
from . import slide

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Every suffix :func:`read_image` reads.
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, *slide.VENDOR_SUFFIXES, *PIL_SUFFIXES)
UNSUPPORTED = "unsupported file type; napari-uam reads TIFF/OME-TIFF, slides (SVS, NDPI, MRXS, SCN, BIF, Philips TIFF), PNG and JPEG."


def _suffix_ok(path: str) -> bool:
    p = path.lower()
    return p.endswith(IMAGE_SUFFIXES)


def _mpp_from_tiff(tif) -> Optional[float]:
    try:
        if tif.is_ome and tif.ome_metadata:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
            if m:
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
                val = float(m.group(1))
                if unit is None or unit.group(1) in ("µm", "um", "\u00b5m"):
                    return val
                if unit.group(1) == "nm":
                    return val / 1000.0
        page = tif.pages[0]
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
        if m:
            return float(m.group(1))
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            # Screen defaults (72/96 dpi) come out implausible, so they carry no pixel size.
            return mpp_from_resolution(num / den, int(tags["ResolutionUnit"].value)) if num and den else None
    except Exception:  # metadata is advisory: a malformed tag never blocks reading pixels
        return None
    return None


def largest_level(tif):
    """The first series' full-resolution level of an open ``tifffile.TiffFile``."""
    series = tif.series[0]
    return series.levels[0] if getattr(series, "levels", None) else series


def is_channels_first(shape) -> bool:
    """Whether a stored (C, H, W) shape has its 3/4 channels first (as OME/SVS may store them)."""
    return len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)


def channels_last(data: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) for a channels-first array (:func:`is_channels_first`), else as is."""
    return np.moveaxis(data, 0, -1) if is_channels_first(data.shape) else data


def _check_file_size(path: Path, shape) -> None:
    """Refuse an image larger than the pipeline's limit before its pixels are decoded.

    Args:
        path: the file (for the message).
        shape: the stored array shape; a leading or trailing axis of 3 or 4 is channels.
    """
    dims = [int(d) for d in shape]
    if len(dims) > 2 and dims[-1] in (3, 4):
        dims = dims[:-1]
    elif len(dims) > 2 and dims[0] in (3, 4):
        dims = dims[1:]
    pixels = int(np.prod(dims, dtype=np.int64))
    if pixels > validation.MAX_PIXELS:
        raise InvalidImageError(
            f"{path.name} holds {'x'.join(map(str, dims))} pixels ({pixels / 1e6:.0f} Mpx); "
            f"napari-uam processes images of up to {validation.MAX_PIXELS / 1e6:.0f} Mpx "
            "(e.g. 10000x10000) in one piece. Crop a region, or export tiles (e.g. from QuPath) "
            "and run them one by one."
        )


def read_image(path) -> tuple[np.ndarray, Optional[float]]:
    """Read an RGB H&E patch and its pixel size.

    Args:
        path: a .tif/.tiff/.ome.tif (largest level, first series), a slide OpenSlide reads
            (level 0, see :func:`.slide.uses_openslide`) or a .png/.jpg file.

    Returns:
        (image, mpp): the pixels as stored (H, W, C) and microns per pixel, or None when the
        file does not say.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"{path} does not exist or is not a file.")
    name = path.name.lower()
    try:
        if slide.uses_openslide(path):
            info = slide.slide_info(path)
            _check_file_size(path, (info.height, info.width))
            return slide.read_region(path, 0, info.height, 0, info.width), info.mpp
        if name.endswith(TIFF_SUFFIXES):
            with tifffile.TiffFile(path) as tif:
                level = largest_level(tif)
                _check_file_size(path, level.shape)
                data = level.asarray()
                mpp = _mpp_from_tiff(tif)
            return channels_last(data), mpp
        if name.endswith(PIL_SUFFIXES):
            with Image.open(path) as im:
                _check_file_size(path, (im.size[1], im.size[0]))
                im.load()
                # Grey modes stay grey (grey + alpha "LA" included) so that they are refused
                # as grey like "L", instead of turning into a colourless RGB image.
                if im.mode not in ("RGB", "RGBA", "L", "LA", "La", "I;16", "I", "1"):
                    im = im.convert("RGB")
                data = np.asarray(im)
                mpp = mpp_from_dpi(im.info.get("dpi"))
            return data, mpp
    except InvalidImageError:
        raise
    except Exception as err:  # any decoder failure becomes one actionable message
        raise InvalidImageError(f"Could not read {path.name}: {type(err).__name__}: {err}") from err
    raise InvalidImageError(f"{path.name}: {UNSUPPORTED}")

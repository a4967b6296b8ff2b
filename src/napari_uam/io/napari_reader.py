"""napari's reader contribution: a patch opens as an RGB image layer with its pixel size in the
layer metadata; a slide (or any TIFF above :data:`napari_uam.validation.MAX_PIXELS`) opens as a
lazy multiscale layer of the file's own pyramid (:mod:`.pyramid`), read chunk by chunk as napari
draws it. The dock then classifies the part of it in view (see the classifier dock)."""

from __future__ import annotations

from pathlib import Path

from .. import validation  # the module: MAX_PIXELS is read at call time (tests lower it)
from . import slide
from .pyramid import lazy_levels, open_pyramid
from .reader import _suffix_ok, read_image

#: Layer metadata key saying that a layer is a file's lazy pyramid (the dock reads regions of it).
PYRAMID_KEY = "pyramid"


def get_reader(path):
    """npe2 reader hook: a function reading ``path`` into image layers, or None."""
    if isinstance(path, list):
        if not path or not all(isinstance(p, str) and _suffix_ok(p) for p in path):
            return None
    elif not (isinstance(path, str) and _suffix_ok(path)):
        return None
    return read_layers


def _opens_as_pyramid(path: str) -> bool:
    if not (slide.uses_openslide(path) or path.lower().endswith((".tif", ".tiff", ".svs"))):
        return False
    try:
        h, w = open_pyramid(path).shapes[0]
    except Exception:  # noqa: BLE001 - not a pyramid: the patch reader says what is wrong
        return False
    return h * w > validation.MAX_PIXELS


def read_layers(path) -> list:
    """The layer data tuples of one or more files."""
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        meta = {"name": Path(p).stem, "rgb": True, "metadata": {"source": str(p)}}
        if _opens_as_pyramid(str(p)):
            pyr = open_pyramid(p)
            meta.update(multiscale=True, contrast_limits=(0, 255))
            meta["metadata"][PYRAMID_KEY] = True
            if pyr.mpp is not None:
                meta["metadata"]["mpp"] = pyr.mpp
            layers.append((lazy_levels(pyr), meta, "image"))
            continue
        data, mpp = read_image(p)
        meta["rgb"] = data.ndim == 3 and data.shape[-1] in (3, 4)
        if mpp is not None:
            meta["metadata"]["mpp"] = mpp
        layers.append((data, meta, "image"))
    return layers


__all__ = ["PYRAMID_KEY", "get_reader", "read_layers"]

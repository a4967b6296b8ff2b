"""The part of a slide in view: what the dock analyses of a multiscale (pyramid) layer, and
where its results go so that they lie on the slide at full-resolution coordinates.

A slide is too large to classify from the dock in one click (the command line does whole
slides, in tiles); the dock takes the region the user has zoomed to, read from level 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.utils.transforms import CompositeAffine

#: Most level-0 pixels the dock analyses at once (the one-piece limit of the command line,
#: 4096 x 4096): beyond it the user zooms in, or runs the slide through ``napari-uam classify``.
VIEW_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class View:
    """A level-0 rectangle ``[y0:y1, x0:x1]`` of a pyramid layer."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    def as_list(self) -> list[int]:
        return [self.y0, self.y1, self.x0, self.x1]

    def describe(self) -> str:
        return f"rows {self.y0}-{self.y1}, columns {self.x0}-{self.x1} of the full resolution"


def is_pyramid(layer) -> bool:
    return bool(getattr(layer, "multiscale", False))


def view_of(layer, viewer) -> View:
    """The level-0 rectangle of ``layer`` shown on ``viewer``'s canvas: the canvas corners in
    world coordinates (camera centre +- half the canvas over the zoom) taken into the layer's
    data coordinates (level 0 for a multiscale layer) and clipped to the image. (napari's own
    ``corner_pixels`` of a multiscale layer are the chunks it has loaded, not the view.)"""
    h, w = viewer.canvas.size
    cy, cx = np.asarray(viewer.camera.center, dtype=float)[-2:]
    half_y, half_x = h / 2 / viewer.camera.zoom, w / 2 / viewer.camera.zoom
    corners = [(cy + dy, cx + dx) for dy in (-half_y, half_y) for dx in (-half_x, half_x)]
    data = np.array([np.asarray(layer.world_to_data(c), dtype=float)[-2:] for c in corners])
    ih, iw = np.shape(layer.data[0] if is_pyramid(layer) else layer.data)[:2]
    y0, x0 = (max(0, int(np.floor(v))) for v in data.min(axis=0))
    y1, x1 = min(ih, int(np.ceil(data[:, 0].max()))), min(iw, int(np.ceil(data[:, 1].max())))
    return View(y0, max(y0, y1), x0, max(x0, x1))


def geometry_of(layer, view: View | None = None) -> dict:
    """Layer keyword arguments that place an array of the view's pixels where they lie on
    ``layer``: its scale, rotation, shear and affine, and its translate moved by the view's
    offset through them (napari maps data d to world as affine(R S H d + translate))."""
    geo = {k: getattr(layer, k) for k in ("scale", "translate", "rotate", "shear", "affine")}
    if view is not None and (view.y0 or view.x0):
        layer_map = CompositeAffine(
            scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear, ndim=len(layer.scale)
        )
        geo["translate"] = tuple(np.asarray(layer_map(np.array([view.y0, view.x0], dtype=float))).tolist())
    return geo


__all__ = ["VIEW_MAX_PIXELS", "View", "geometry_of", "is_pyramid", "view_of"]

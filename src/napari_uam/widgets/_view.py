"""The part of an image the dock analyses, and where its results go so that they lie on the
image at full-resolution coordinates: the part of a slide in view (a multiscale layer is too
large to classify in one click; the command line does whole slides, in tiles), or the area of
shapes the user drew (rectangles, polygons, ellipses), read from level 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.utils.transforms import CompositeAffine
from skimage.draw import polygon as fill_polygon

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


def full_resolution(layer):
    """The layer's full-resolution data: level 0 of a pyramid (lazy; never read whole here)."""
    return layer.data[0] if is_pyramid(layer) else layer.data


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
    ih, iw = np.shape(full_resolution(layer))[:2]
    y0, x0 = (max(0, int(np.floor(v))) for v in data.min(axis=0))
    y1, x1 = min(ih, int(np.ceil(data[:, 0].max()))), min(iw, int(np.ceil(data[:, 1].max())))
    return View(y0, max(y0, y1), x0, max(x0, x1))


#: Shape types that enclose an area (lines and paths do not).
AREA_SHAPES = ("rectangle", "polygon", "ellipse")


@dataclass(frozen=True)
class ShapesArea:
    """Drawn shapes on an image: their level-0 bounding box and, inside it, which pixels they
    cover (the rest is analysed as glass)."""

    view: View
    inside: np.ndarray  # (h, w) bool, the view's shape
    n_shapes: int

    def describe(self) -> str:
        what = "shape" if self.n_shapes == 1 else f"{self.n_shapes} shapes"
        return f"inside the drawn {what} ({self.view.describe()}; outside them counts as glass)"


def _outline(vertices: np.ndarray, kind: str) -> np.ndarray:
    """(n, 2) image-data outline of one shape; an ellipse from its 4 bounding-box corners."""
    if kind != "ellipse":
        return vertices
    centre = vertices.mean(axis=0)
    a, b = (vertices[1] - vertices[0]) / 2, (vertices[2] - vertices[1]) / 2  # half-axis vectors
    t = np.linspace(0, 2 * np.pi, 128, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def shapes_area(image_layer, shapes_layer) -> ShapesArea:
    """The area of ``shapes_layer``'s selected shapes (all of them when none is selected) on
    ``image_layer``, through world coordinates (the two layers may have other transforms).

    Raises:
        ValueError: no shape, a selection of lines / paths only, or shapes off the image.
    """
    chosen = sorted(shapes_layer.selected_data) or list(range(len(shapes_layer.data)))
    outlines = []
    for i in chosen:
        kind = shapes_layer.shape_type[i]
        if kind not in AREA_SHAPES:
            continue
        verts = np.asarray(shapes_layer.data[i], dtype=float)
        world = [np.asarray(shapes_layer.data_to_world(v), dtype=float) for v in verts]
        data = np.array([np.asarray(image_layer.world_to_data(w), dtype=float)[-2:] for w in world])
        outlines.append(_outline(data, kind))
    if not outlines:
        raise ValueError(
            f"'{shapes_layer.name}' holds no rectangle, polygon or ellipse"
            + (" among the selected shapes" if shapes_layer.selected_data else "")
            + ": draw one around the cells to analyse (lines and paths enclose no area)."
        )
    ih, iw = np.shape(full_resolution(image_layer))[:2]
    pts = np.concatenate(outlines)
    y0, x0 = (max(0, int(np.floor(v))) for v in pts.min(axis=0))
    y1, x1 = min(ih, int(np.ceil(pts[:, 0].max())) + 1), min(iw, int(np.ceil(pts[:, 1].max())) + 1)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"The shapes of '{shapes_layer.name}' lie outside '{image_layer.name}'.")
    view = View(y0, y1, x0, x1)
    inside = np.zeros(view.shape, dtype=bool)
    for outline in outlines:
        rr, cc = fill_polygon(outline[:, 0] - y0, outline[:, 1] - x0, shape=view.shape)
        inside[rr, cc] = True
    if not inside.any():
        raise ValueError(f"The shapes of '{shapes_layer.name}' cover no pixel of '{image_layer.name}'.")
    return ShapesArea(view=view, inside=inside, n_shapes=len(outlines))


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


__all__ = [
    "AREA_SHAPES",
    "VIEW_MAX_PIXELS",
    "ShapesArea",
    "View",
    "geometry_of",
    "is_pyramid",
    "shapes_area",
    "view_of",
]

"""What the result layers look like, and the work to show them prepared off the GUI thread.

A pathologist reads the nuclei layer as class-coloured outlines over the H&E: one fixed colour
per class (tumor green, non-tumor blue, unknown yellow: the annotation dock's colours), drawn
as contours so the chromatin stays visible, and a hover line with the nucleus' class, tumor
probability and area instead of every radiomics number. :func:`prepare` builds the features
table, the colour maps and the checksums in the worker thread and compiles napari's colour
lookup there too (its first use JIT-compiles for seconds), so adding the layers in the GUI
thread only hands napari ready objects. No Qt here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap

from .. import annotation as A
from . import _layers as L

logger = logging.getLogger(__name__)

#: Legend entries, in the order shown: (class shown, RGBA).
TUMOR, NON_TUMOR, UNKNOWN = "tumor", "non-tumor", "unknown"
CLASS_RGBA = {
    TUMOR: A.CLASS_COLORS[A.TUMOR],
    NON_TUMOR: A.CLASS_COLORS[A.NON_TUMOR],
    UNKNOWN: A.CLASS_COLORS[A.UNLABELLED],
}
#: Contour width (pixels) of the nuclei outlines.
CONTOUR_PX = 2
#: Tumor-region tint: white (p = 0) to this colour (p = 1), multiplied onto the H&E.
REGION_RGBA = (1.0, 0.72, 0.45, 1.0)
#: Opacity of the tumor-region tint: light enough that nuclei and their outlines stay readable.
REGION_OPACITY = 0.45
#: Columns the hover line shows, with their labels (anything else stays in the table/export).
HOVER_COLUMNS = (("class", "class"), ("tumor_probability", "tumor probability"), ("area_um2", "area"),
                 ("annotation", "set by"))  # fmt: skip


def display_class(name, tumor_class: Optional[str]) -> str:
    """:data:`TUMOR`, :data:`NON_TUMOR` or :data:`UNKNOWN` for a class name in a cell table."""
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return UNKNOWN
    text = str(name)
    if tumor_class is not None and text == str(tumor_class):
        return TUMOR
    cls = A.class_of(text)
    return {A.TUMOR: TUMOR, A.NON_TUMOR: NON_TUMOR}.get(cls, UNKNOWN)


def class_color_dict(table: pd.DataFrame, tumor_class: Optional[str] = None) -> dict:
    """label -> RGBA of its class (unknown when the table has no ``class``); background clear."""
    colors = {None: CLASS_RGBA[UNKNOWN], 0: (0.0, 0.0, 0.0, 0.0)}
    labels = table["label"].to_numpy(np.int64)
    if "class" not in table.columns:
        colors.update({int(lab): CLASS_RGBA[UNKNOWN] for lab in labels})
        return colors
    for lab, cls in zip(labels, table["class"]):
        colors[int(lab)] = CLASS_RGBA[display_class(cls, tumor_class)]
    return colors


def class_colormap(table: pd.DataFrame, tumor_class: Optional[str] = None):

    return DirectLabelColormap(color_dict=class_color_dict(table, tumor_class))


def legend_html() -> str:
    """The dock's legend: a coloured square per class and the tumor-region tint."""

    def swatch(rgba):
        r, g, b = (int(round(255 * c)) for c in rgba[:3])
        return f'<span style="color: rgb({r},{g},{b}); font-size: 14pt;">&#9632;</span>'

    items = [f"{swatch(CLASS_RGBA[c])} {c}" for c in (TUMOR, NON_TUMOR, UNKNOWN)]
    items.append(f"{swatch(REGION_RGBA)} tumor region (tint)")
    return "Nuclei outlines: " + " &nbsp; ".join(items)


def warm_colormap(cmap, data: np.ndarray) -> None:
    """Map ``data`` through ``cmap`` once, so napari's JIT-compiled lookup (seconds on first
    use) and the colour map's cached mapping are ready before the GUI thread needs them.
    Best effort: uses napari's private mapping call, and any failure only costs speed."""
    try:
        cmap._data_to_texture(np.ascontiguousarray(data[:64, :64]))  # C layout, as napari maps
        for view in (np.uint8, np.uint16):  # the texture look-up tables vispy asks for
            cmap._get_mapping_from_cache(np.dtype(view))
        cmap.map(np.arange(4, dtype=np.asarray(data).dtype))  # thumbnail and hover colours
    except Exception:  # noqa: BLE001 - an optimisation; the GUI thread maps it anyway
        logger.debug("could not pre-compile the label colour lookup", exc_info=True)


@dataclass
class Prepared:
    """Everything the GUI thread needs to show one run's results, built in the worker."""

    labels: np.ndarray
    tumor: Optional[np.ndarray]
    features: pd.DataFrame
    nuclei_colormap: object
    tumor_colormap: object
    nuclei_checksums: tuple
    tumor_checksums: Optional[tuple]
    nuclei_layer: object = None  # a hidden CellLabels, ready for napari (None: not built)
    tumor_layer: object = None


def _hidden_layer(cls, data, features, colormap, geometry):
    """A result layer built off the GUI thread: hidden, so napari draws nothing until it is
    added and shown (setting the contour of a visible 2000x2000 layer takes a second)."""
    layer = cls(data, features=features, colormap=colormap, opacity=1.0, visible=False, **geometry)
    layer.contour = CONTOUR_PX
    return layer


def prepare(
    labels: np.ndarray, table: pd.DataFrame, tumor: Optional[np.ndarray], geometry: Optional[dict] = None
) -> Prepared:
    """Build the layers' data, features, colour maps and checksums (worker thread)."""
    labels, tumor = compact_labels(labels), None if tumor is None else compact_labels(tumor)
    features = L.to_features(table)
    tumor_class = table.attrs.get("tumor_class")
    nuclei_cmap = class_colormap(table, tumor_class if "class" in table.columns else None)
    tumor_cmap = L.tumor_colormap()
    warm_colormap(nuclei_cmap, labels)
    warm_colormap(tumor_cmap, labels)
    fsum = L.features_checksum(features)
    geometry = geometry or {}
    return Prepared(
        nuclei_layer=_hidden_layer(CellLabels, labels, features, nuclei_cmap, geometry),
        tumor_layer=None if tumor is None else _hidden_layer(Labels, tumor, features, tumor_cmap, geometry),
        labels=labels,
        tumor=tumor,
        features=features,
        nuclei_colormap=nuclei_cmap,
        tumor_colormap=tumor_cmap,
        nuclei_checksums=(L.data_checksum(labels), fsum),
        tumor_checksums=None if tumor is None else (L.data_checksum(tumor), fsum),
    )


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as uint16 when their ids fit (fewer than 65,535 nuclei), else unchanged.

    napari colours 8- and 16-bit labels through a look-up texture, but maps every pixel of
    32-bit labels in Python-called loops, in the GUI thread, on each redraw: 1.2 s for a
    2000x2000 field. The ids, and so the features, exports and annotations, are the same.
    """
    labels = np.asarray(labels)
    if labels.dtype.itemsize > 2 and (labels.size == 0 or int(labels.max()) < np.iinfo(np.uint16).max):
        return labels.astype(np.uint16)
    return labels


def _format(key: str, value) -> str:
    if key == "tumor_probability":
        return f"{float(value):.2f}"
    if key == "area_um2":
        return f"{float(value):.1f} um\N{SUPERSCRIPT TWO}"
    if key == "annotation":
        return {"user": "you", "region": "region layer", "points": "points layer"}.get(str(value), "")
    return str(value)


class CellLabels(Labels):
    """A napari Labels layer of nuclei whose hover line is short: the nucleus' label, class,
    tumor probability, area and who set the class, not its ~100 feature columns (which stay in
    ``features`` for export and training).

    napari has no public hook for the Labels status text; this overrides its
    ``_get_properties`` (napari 0.5-0.9), everything else is napari's Labels.
    """

    def _get_properties(self, position, *, view_direction=None, dims_displayed=None, world=False) -> list:
        full = super()._get_properties(position, view_direction=view_direction, dims_displayed=dims_displayed,
                                       world=world)  # fmt: skip
        if not full or full == ["[No Properties]"]:
            return full
        value = self.get_value(position, view_direction=view_direction, dims_displayed=dims_displayed, world=world)
        idx = self._label_index.get(int(value[1] if self.multiscale else value))
        if idx is None:
            return full
        row = self.features.iloc[idx]
        out = [f"label: {int(row['label'])}" if "label" in row.index else f"label: {int(value)}"]
        for key, name in HOVER_COLUMNS:
            if key in row.index and row[key] is not None and not (isinstance(row[key], float) and np.isnan(row[key])):
                text = _format(key, row[key])
                if text:
                    out.append(f"{name}: {text}")
        return out

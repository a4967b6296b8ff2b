"""Bookkeeping of the layers the UAM dock writes, without any Qt.

The dock may only ever replace layers it made itself and the user has not touched. Every
layer it writes carries ``layer.metadata["napari_uam"]`` with the source image's name, the
layer's kind and checksums of the data and features written; a layer whose checksum no
longer matches was edited by the user and is never overwritten, and a same-named layer
without that record was made by the user. This module decides which layer a result goes to,
turns cell tables into napari ``features`` and back, and words the status line, so the
widget stays thin and this logic is tested headless.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pandas as pd
from napari.utils.colormaps import DirectLabelColormap

from ..io.export import output_stem, safe_stem
from ..pixel_size import DEFAULT_MPP, plausible

#: Key of the plugin's record in ``layer.metadata``.
OWNER_KEY = "napari_uam"
#: Layer kinds the dock writes (also the suffix of the layer names).
KIND_NUCLEI = "nuclei"
KIND_TUMOR = "tumor cells"
#: One clear green for tumor cells (the UAM paper's figures paint tumor cells green).
TUMOR_GREEN = (0.0, 1.0, 0.0, 1.0)


def data_checksum(data) -> str:
    """Short SHA-256 of an array's shape, dtype and values.

    Args:
        data: array-like (a napari layer's ``data``).

    Returns:
        16 hex digits; equal for equal arrays, different after any painted pixel.
    """
    arr = np.ascontiguousarray(np.asarray(data))
    h = hashlib.sha256()
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


def features_checksum(features: Optional[pd.DataFrame]) -> str:
    """Short SHA-256 of a features table (columns and values), so class edits are noticed."""
    if features is None or features.shape[1] == 0:
        return "empty"
    h = hashlib.sha256("|".join(map(str, features.columns)).encode())
    h.update(pd.util.hash_pandas_object(features.reset_index(drop=True), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def owner_record(layer) -> Optional[dict]:
    """The plugin's record of a layer, or None if the layer was not written by the plugin."""
    meta = getattr(layer, "metadata", None) or {}
    rec = meta.get(OWNER_KEY)
    if isinstance(rec, dict) and {"source", "kind", "checksum"} <= set(rec):
        return rec
    return None


def is_edited(layer) -> bool:
    """True if a plugin layer's data or features differ from what the plugin wrote."""
    rec = owner_record(layer)
    if rec is None:
        return False
    if data_checksum(layer.data) != rec["checksum"]:
        return True
    return features_checksum(getattr(layer, "features", None)) != rec.get("features_checksum")


def stamp(layer, source: str, kind: str, checksums: Optional[tuple] = None, **params) -> None:
    """Record on ``layer`` that the plugin wrote it (call after data and features are set).

    Args:
        layer: the napari layer just written.
        source: name of the image layer the result belongs to.
        kind: :data:`KIND_NUCLEI` or :data:`KIND_TUMOR`.
        checksums: ``(data_checksum, features_checksum)`` of what was written, computed in
            the worker thread (hashing a large table in the GUI thread stalls it); None
            computes them from the layer.
        **params: run parameters kept with the layer (pixel size, backend, model id, ...).
    """
    if checksums is None:
        checksums = (data_checksum(layer.data), features_checksum(getattr(layer, "features", None)))
    meta = dict(layer.metadata or {})
    meta[OWNER_KEY] = {
        "source": source,
        "kind": kind,
        "checksum": checksums[0],
        "features_checksum": checksums[1],
        **params,
    }
    layer.metadata = meta


def owned_layers(layers: Iterable, source: str, kind: str) -> list:
    """The plugin's layers of ``kind`` for image ``source``, bottom to top of the layer list."""
    out = []
    for layer in layers:
        rec = owner_record(layer)
        if rec is not None and rec["source"] == source and rec["kind"] == kind:
            out.append(layer)
    return out


def current_layer(layers: Iterable, source: str, kind: str):
    """The plugin's newest (topmost) layer of ``kind`` for ``source``, edited or not, or None."""
    found = owned_layers(layers, source, kind)
    return found[-1] if found else None


def unique_name(layers: Iterable, base: str) -> str:
    """``base`` if no layer has that name, else ``base [n]`` with the smallest free n."""
    names = {layer.name for layer in layers}
    if base not in names:
        return base
    n = 1
    while f"{base} [{n}]" in names:
        n += 1
    return f"{base} [{n}]"


@dataclass
class OutputPlan:
    """Where one result goes.

    Attributes:
        layer: the plugin's own unedited layer to replace, or None to add a new layer.
        name: name of the layer written (the replaced layer's, or a free name).
        note: why the result did not go to the usual name (empty when it did).
    """

    layer: object
    name: str
    note: str = ""


def plan_output(layers, source: str, kind: str) -> OutputPlan:
    """Decide which layer a result of ``kind`` for image ``source`` is written to.

    The topmost plugin layer of that kind for that image is replaced if the user has not
    edited it. Otherwise a new layer is added, named ``"<source> <kind>"`` when free, or with
    a ``[n]`` suffix when that name is taken by a user's layer or an edited plugin layer.
    """
    layers = list(layers)
    base = f"{source} {kind}"
    for layer in reversed(owned_layers(layers, source, kind)):
        if not is_edited(layer):
            return OutputPlan(layer=layer, name=layer.name)
    name = unique_name(layers, base)
    note = ""
    if name != base:
        taken = next(layer for layer in layers if layer.name == base)
        rec = owner_record(taken)
        if rec is None:
            why = "it is your layer"
        elif rec["source"] == source and rec["kind"] == kind:
            why = "you edited it"
        else:
            why = "it holds another result"
        note = f"'{base}' was kept because {why}; results are in '{name}'."
    return OutputPlan(layer=None, name=name, note=note)


def to_features(table: pd.DataFrame) -> pd.DataFrame:
    """A cell table as napari Labels ``features``: an ``index`` column (= label id) first.

    napari looks the hovered label up in the ``index`` column, so the status bar shows the
    row of the nucleus under the cursor.
    """
    feats = table.reset_index(drop=True).copy()
    if "index" in feats.columns:
        feats = feats.drop(columns="index")
    feats.insert(0, "index", feats["label"].to_numpy(dtype=np.int64))
    feats.attrs = {}
    return feats


def from_features(features: pd.DataFrame, attrs: Optional[dict] = None) -> pd.DataFrame:
    """Inverse of :func:`to_features`: the cell table, with ``attrs`` restored."""
    table = features.drop(columns=[c for c in ("index",) if c in features.columns]).reset_index(drop=True)
    table = table.copy()
    table.attrs = dict(attrs or {})
    return table


def tumor_colormap():
    """A napari label colormap painting every non-zero label :data:`TUMOR_GREEN`.

    The tumor layer holds only tumor nuclei (others are 0), so one default colour for all
    labels is the whole map; background stays transparent.
    """

    return DirectLabelColormap(color_dict={None: TUMOR_GREEN, 0: (0.0, 0.0, 0.0, 0.0)})


def mpp_from_metadata(metadata: Optional[dict], default: float = DEFAULT_MPP) -> tuple[float, bool]:
    """Pixel size of an image layer from its metadata.

    Returns:
        (mpp, known): the layer's ``metadata["mpp"]`` and True when it is a plausible
        number, else ``(default, False)``.
    """
    value = (metadata or {}).get("mpp")
    if value is None or not plausible(value):
        return default, False
    return float(value), True


def export_stem(layer_name: str, metadata: Optional[dict] = None) -> str:
    """File-name stem for an image's exports: its source file's stem, else its layer name."""

    source = (metadata or {}).get("source")
    if isinstance(source, str) and source.strip():
        return output_stem(source)
    return safe_stem(layer_name)  # a layer name has no file suffix to strip


def describe_layer(layer) -> str:
    """Why a layer cannot be classified, or "" when it is an RGB image layer."""
    kind = type(layer).__name__
    if kind != "Image":
        return f"'{layer.name}' is a {kind} layer, not an image: choose an RGB H&E image layer in the Image list."
    if not getattr(layer, "rgb", False):
        shape = tuple(np.shape(layer.data))
        return (
            f"'{layer.name}' is a single-channel image (shape {shape}); UAM needs an RGB H&E "
            "image (height x width x 3). Open the colour image."
        )
    return ""


def status_text(
    *,
    ran: list[str],
    n_cells: int,
    seconds: float,
    backend: Optional[str] = None,
    model_id: Optional[str] = None,
    n_tumor: Optional[int] = None,
    notes: Iterable[str] = (),
) -> str:
    """The one-paragraph status line after a run: what ran, on what, how many cells, how long."""
    parts = []
    if "segment" in ran:
        parts.append(f"segmented ({backend})" if backend else "segmented")
    if "measure" in ran:
        parts.append("measured")
    if "classify" in ran:
        parts.append(f"classified ({model_id})" if model_id else "classified")
    what = ", ".join(parts) if parts else "updated"
    cells = f"{n_cells} cell{'s' if n_cells != 1 else ''}"
    if n_tumor is not None:
        cells += f", {n_tumor} tumor"
    text = f"{what[0].upper()}{what[1:]}: {cells} in {seconds:.1f} s."
    notes = [n for n in notes if n]
    if notes:
        text += " " + " ".join(notes)
    return text

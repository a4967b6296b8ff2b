"""Cell-class annotations on a nuclei cell table, without any Qt.

An annotation is two columns of the nuclei layer's cell table (its napari ``features``):

* ``class``: the cell's class name, ``"tumor"``, ``"non-tumor"`` or :data:`UNLABELLED`
  (excluded from training);
* ``annotation``: where the class came from, one of :data:`SOURCES` (``"model"`` for the
  classifier's prediction, ``"user"`` for a click or a paint stroke, ``"region"`` for a tumor
  region mask, ``"points"`` for a points layer, ``"none"`` for a nucleus the user added).

The functions here take and return tables (never modify their input), so the annotation dock
stays thin and this logic is tested headless. Cell labels from a region follow the UAM paper's
rule (tumor when more than 50 % of the nucleus lies inside the region); from points, each point
labels the nucleus under it, else the nucleus with the nearest centroid within a radius.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from .pixel_size import DEFAULT_MPP
from .tumor import cells_in_mask

TUMOR = "tumor"
NON_TUMOR = "non-tumor"
#: Class of a nucleus that has no label yet; such cells are left out of training.
UNLABELLED = "unlabelled"
#: Classes an annotator can give, in the order the dock shows them.
CLASSES = (TUMOR, NON_TUMOR, UNLABELLED)
#: Keyboard shortcut (on the nuclei layer) -> class.
CLASS_KEYS = {"t": TUMOR, "n": NON_TUMOR, "u": UNLABELLED}
#: Where a class came from.
SOURCES = ("model", "user", "region", "points", "none")
#: Display colours (RGBA) of the annotation mode: tumor green as in the classifier dock.
CLASS_COLORS = {
    TUMOR: (0.0, 1.0, 0.0, 1.0),
    NON_TUMOR: (0.2, 0.55, 1.0, 1.0),
    UNLABELLED: (1.0, 0.85, 0.0, 1.0),
}
#: Largest distance (um) between a point and a nucleus centroid it labels (BRCA-M2C's rule).
POINT_RADIUS_UM = 3.0


def class_of(name: object) -> str:
    """Map a class name (the model's, or a dataset's) onto :data:`CLASSES`.

    ``"tumor"`` / ``"tumour"`` / ``"1"`` / True -> tumor; ``"non-tumor"`` and every other
    named class (stromal, lymphocyte, ...) -> non-tumor; empty, NaN or ``"unlabelled"`` ->
    unlabelled.
    """
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return UNLABELLED
    text = str(name).strip().lower()
    if text in ("", "nan", "none", UNLABELLED, "unlabeled"):
        return UNLABELLED
    if text in ("tumor", "tumour", "1", "true", "malignant"):
        return TUMOR
    return NON_TUMOR


def with_annotation_columns(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of a cell table with ``class`` and ``annotation`` columns (added when missing).

    A classified table keeps its predicted classes (source ``"model"``); an unclassified one
    starts with every nucleus unlabelled.
    """
    out = table.copy()
    if "class" not in out.columns:
        out["class"] = UNLABELLED
        source = "none"
    else:
        out["class"] = [class_of(c) for c in out["class"]]
        source = "model"
    if "annotation" not in out.columns:
        out["annotation"] = np.where(out["class"] == UNLABELLED, "none", source)
    out["class"] = out["class"].astype(object)
    out["annotation"] = out["annotation"].astype(object)
    out.attrs = dict(table.attrs)
    return out


def centroids(labels: np.ndarray, ids: Optional[Iterable[int]] = None) -> pd.DataFrame:
    """(y, x) centroid in pixels of each label id (all non-zero ids by default)."""
    labels = np.asarray(labels)
    if ids is None:
        ids = np.unique(labels)
        ids = ids[ids > 0]
    ids = np.asarray(list(ids), dtype=np.int64)
    if ids.size == 0:
        return pd.DataFrame({"label": ids, "y": np.zeros(0), "x": np.zeros(0)})
    cy = ndimage.mean(np.indices(labels.shape)[0], labels, ids)
    cx = ndimage.mean(np.indices(labels.shape)[1], labels, ids)
    return pd.DataFrame({"label": ids, "y": np.asarray(cy, float), "x": np.asarray(cx, float)})


def sync_to_labels(table: pd.DataFrame, labels: np.ndarray) -> tuple[pd.DataFrame, list[int], list[int]]:
    """Make the table hold exactly one row per nucleus of ``labels`` after Labels-tool edits.

    Nuclei that were erased (or merged away) lose their row; new nuclei (painted, or the new
    half of a split) get a row with class :data:`UNLABELLED`, source ``"none"``, their centroid
    and NaN features (the features are measured again before training).

    Returns:
        (table, added ids, removed ids); rows sorted by label.
    """
    table = with_annotation_columns(table)
    ids = np.unique(np.asarray(labels))
    ids = ids[ids > 0].astype(np.int64)
    have = table["label"].to_numpy(np.int64)
    removed = sorted(set(have.tolist()) - set(ids.tolist()))
    added = sorted(set(ids.tolist()) - set(have.tolist()))
    out = table[np.isin(have, ids)]
    if added:
        new = centroids(labels, added)
        new["class"] = UNLABELLED
        new["annotation"] = "none"
        out = pd.concat([out, new], ignore_index=True)
    out = out.sort_values("label", kind="stable").reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out, added, removed


def set_class(table: pd.DataFrame, ids: Iterable[int], cls: str, source: str = "user") -> tuple[pd.DataFrame, int]:
    """Give the nuclei ``ids`` the class ``cls``.

    Returns:
        (new table, number of rows whose class or source changed).

    Raises:
        ValueError: unknown class or source.
    """
    if cls not in CLASSES:
        raise ValueError(f"Unknown class {cls!r}; choose one of {', '.join(CLASSES)}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown annotation source {source!r}.")
    out = with_annotation_columns(table)
    ids = np.asarray([int(i) for i in ids if int(i) > 0], dtype=np.int64)
    sel = np.isin(out["label"].to_numpy(np.int64), ids)
    changed = int((sel & ((out["class"] != cls) | (out["annotation"] != source))).sum())
    out.loc[sel, "class"] = cls
    out.loc[sel, "annotation"] = source
    return out, changed


def classes_from_mask(labels: np.ndarray, mask: np.ndarray) -> pd.Series:
    """Class of each nucleus from a tumor-region mask: tumor when > 50 % of its pixels are inside.

    Args:
        labels: (H, W) int nuclei.
        mask: (H, W) tumor region (non-zero = tumor), same shape.

    Returns:
        Series label -> :data:`TUMOR` / :data:`NON_TUMOR`.

    Raises:
        ValueError: the mask does not have the labels' shape.
    """
    if np.shape(mask) != np.shape(labels):
        raise ValueError(
            f"The region mask is {np.shape(mask)} pixels but the nuclei are {np.shape(labels)}; "
            "draw the region on the same image."
        )
    t = cells_in_mask(labels, mask)
    return pd.Series(np.where(t.to_numpy() == 1, TUMOR, NON_TUMOR), index=t.index)


def classes_from_points(
    labels: np.ndarray,
    points_yx: np.ndarray,
    point_classes: Optional[Iterable] = None,
    mpp: float = DEFAULT_MPP,
    radius_um: float = POINT_RADIUS_UM,
) -> pd.Series:
    """Class of the nuclei marked by points: the nucleus under a point, else the nearest centroid.

    Args:
        labels: (H, W) int nuclei.
        points_yx: (n, 2) point coordinates in the labels' pixels.
        point_classes: (n,) class per point (mapped with :func:`class_of`); None -> all tumor.
        mpp: pixel size, to turn ``radius_um`` into pixels.
        radius_um: largest centroid distance of a point outside every nucleus.

    Returns:
        Series label -> class for the nuclei that a point marks (a nucleus marked by several
        points takes the first one's class).
    """
    labels = np.asarray(labels)
    pts = np.asarray(points_yx, dtype=float).reshape(-1, 2)
    classes = [TUMOR] * len(pts) if point_classes is None else [class_of(c) for c in point_classes]
    if len(classes) != len(pts):
        raise ValueError(f"{len(classes)} classes for {len(pts)} points.")
    cents = centroids(labels)
    tree = cKDTree(cents[["y", "x"]].to_numpy()) if len(cents) else None
    out: dict[int, str] = {}
    h, w = labels.shape
    for (y, x), cls in zip(pts, classes):
        iy, ix = int(round(y)), int(round(x))
        lab = int(labels[iy, ix]) if 0 <= iy < h and 0 <= ix < w else 0
        if lab == 0 and tree is not None:
            dist, idx = tree.query([y, x])
            if dist * mpp <= radius_um:
                lab = int(cents["label"].iloc[idx])
        if lab > 0 and lab not in out:
            out[lab] = cls
    return pd.Series(out, dtype=object)


def apply_classes(
    table: pd.DataFrame, classes: pd.Series, source: str, keep_user: bool = True
) -> tuple[pd.DataFrame, int]:
    """Set each nucleus of ``classes`` (label -> class) with the given source; returns (table, n changed).

    With ``keep_user`` the nuclei an annotator set by hand keep their class: a coarse region
    or a points layer never undoes a deliberate correction.
    """
    out = with_annotation_columns(table)
    if keep_user:
        mine = set(out.loc[out["annotation"] == "user", "label"].astype(int).tolist())
        classes = classes[[int(i) not in mine for i in classes.index]]
    n = 0
    for cls in CLASSES:
        ids = classes.index[classes.to_numpy() == cls]
        if len(ids):
            out, k = set_class(out, ids, cls, source)
            n += k
    return out, n


def counts(table: pd.DataFrame) -> dict:
    """Cells per class and how many were set by the user (for the dock's status line)."""
    t = with_annotation_columns(table)
    out = {c: int((t["class"] == c).sum()) for c in CLASSES}
    out["corrected"] = int((t["annotation"] == "user").sum())
    return out


def class_color_dict(table: pd.DataFrame) -> dict:
    """label -> RGBA of its class, plus background transparent (for a DirectLabelColormap)."""
    t = with_annotation_columns(table)
    colors = {None: (0.5, 0.5, 0.5, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for lab, cls in zip(t["label"].to_numpy(np.int64), t["class"]):
        colors[int(lab)] = CLASS_COLORS.get(cls, CLASS_COLORS[UNLABELLED])
    return colors

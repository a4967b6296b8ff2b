"""Instance label maps: dense ids and centroids.

Shared by the segmentation metrics (:mod:`napari_uam.segment.metrics`) and the radiomics
context features, in a module of its own so that neither package imports the other (radiomics
importing the segment package made classify -> radiomics -> segment -> classify an import cycle).
"""

from __future__ import annotations

import numpy as np


def dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the ids of an instance map to 0..N-1 (background -> -1); returns (flat ids, N)."""
    flat = np.asarray(labels).ravel()
    ids, inv = np.unique(flat, return_inverse=True)
    if ids.size and ids[0] == 0:
        return inv.astype(np.int64) - 1, ids.size - 1
    return inv.astype(np.int64), ids.size


def centroids(labels: np.ndarray) -> np.ndarray:
    """(N, 2) float (y, x) centroids of the instances of an (H, W) map, in increasing id order."""
    lab = np.asarray(labels)
    flat = lab.ravel()
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.integer):
        return _centroids_sorted(lab)
    top = int(flat.max())
    if top <= 0 or top > 4 * flat.size + (1 << 20) or flat.min() < 0:
        return _centroids_sorted(lab)  # no, negative or huge ids: the sorting version
    # Bincounts over the raw ids of the labelled pixels: no sort of the pixels (which took
    # most of the time on big fields). The coordinate sums are sums of integers, exact in
    # float64, so they equal the sorting version's whatever the order of addition.
    where = np.flatnonzero(flat)
    idx = flat[where]
    count = np.bincount(idx, minlength=top + 1)
    ids = np.flatnonzero(count)
    if ids.size == 0:
        return np.zeros((0, 2))
    yy, xx = np.divmod(where, lab.shape[1])
    c = count[ids]
    sy = np.bincount(idx, yy, top + 1)
    sx = np.bincount(idx, xx, top + 1)
    return np.stack([sy[ids] / c, sx[ids] / c], axis=1)


def _centroids_sorted(lab: np.ndarray) -> np.ndarray:
    """:func:`centroids` through a sort of the ids (any id values)."""
    flat, n = dense_ids(lab)
    if n == 0:
        return np.zeros((0, 2))
    keep = flat >= 0
    idx = flat[keep]
    yy, xx = np.divmod(np.flatnonzero(keep), lab.shape[1])
    count = np.bincount(idx, minlength=n)
    return np.stack([np.bincount(idx, yy, n) / count, np.bincount(idx, xx, n) / count], axis=1)

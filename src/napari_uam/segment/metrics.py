"""Instance segmentation and point detection metrics.

Instance metrics (AJI, PQ with DQ and SQ, pixel Dice, detection precision / recall / F1 at
IoU 0.5) follow the definitions used by HoVer-Net (Graham et al., 2019) so that numbers are
comparable with its CoNSeP table:

* AJI (Kumar et al., 2017): every true nucleus is paired with the predicted nucleus of highest
  IoU (a prediction may be reused); AJI = sum of paired intersections / (sum of paired unions
  + areas of unpaired true nuclei + areas of predictions never paired).
* PQ (Kirillov et al., 2019): pairs with IoU > 0.5 are unique by construction; DQ =
  TP / (TP + FP/2 + FN/2), SQ = mean IoU of the TP pairs, PQ = DQ * SQ.

All overlaps come from one contingency table built with ``np.unique`` over the pixels where
both maps are non-zero, so the cost is O(pixels + overlapping pairs), never O(N_true * N_pred).

Point detection (:func:`match_points`) pairs predicted centroids with annotated points one to
one within a radius by an optimal (Hungarian) assignment on the sparse neighbourhood graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..instances import _centroids_sorted, centroids, dense_ids as _dense_ids  # noqa: F401 - metrics' API

#: IoU above which a predicted and a true nucleus count as the same nucleus (PQ, detection).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Overlaps:
    """Sparse overlap table of two instance maps (ids relabelled to 0..N-1).

    Attributes:
        true_area: (N_true,) pixel count of each true instance.
        pred_area: (N_pred,) pixel count of each predicted instance.
        ti: (K,) true index of each overlapping pair.
        pj: (K,) predicted index of each overlapping pair.
        inter: (K,) intersection in pixels of each pair.
    """

    true_area: np.ndarray
    pred_area: np.ndarray
    ti: np.ndarray
    pj: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """(K,) union in pixels of each overlapping pair."""
        return self.true_area[self.ti] + self.pred_area[self.pj] - self.inter

    @property
    def iou(self) -> np.ndarray:
        """(K,) IoU of each overlapping pair."""
        return self.inter / self.union


def overlaps(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Build the sparse overlap table of two (H, W) instance maps (0 = background).

    Args:
        true: (H, W) integer ground-truth instance map; ids need not be consecutive.
        pred: (H, W) integer predicted instance map, same shape.

    Returns:
        Overlaps: areas of every instance and the intersections of every overlapping pair.
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred have different shapes: {true.shape} vs {pred.shape}")
    t, nt = _dense_ids(true)
    p, npred = _dense_ids(pred)
    true_area = np.bincount(t[t >= 0], minlength=nt).astype(np.int64)
    pred_area = np.bincount(p[p >= 0], minlength=npred).astype(np.int64)
    both = (t >= 0) & (p >= 0)
    keys, inter = np.unique(t[both] * max(npred, 1) + p[both], return_counts=True)
    return Overlaps(
        true_area=true_area,
        pred_area=pred_area,
        ti=keys // max(npred, 1),
        pj=keys % max(npred, 1),
        inter=inter.astype(np.int64),
    )


def aji(true: np.ndarray, pred: np.ndarray, table: Overlaps | None = None) -> float:
    """Aggregated Jaccard Index of two (H, W) instance maps.

    Each true nucleus takes the prediction of highest IoU (ties: lowest index); predictions
    may be taken by several true nuclei, as in Kumar et al. and HoVer-Net's ``get_fast_aji``.

    Returns:
        float in [0, 1]; 1.0 when both maps are empty, 0.0 when exactly one is.
    """
    o = table if table is not None else overlaps(true, pred)
    nt, npred = o.true_area.size, o.pred_area.size
    if nt == 0 and npred == 0:
        return 1.0
    if nt == 0 or npred == 0:
        return 0.0
    iou = o.iou
    # Best prediction per true nucleus: sort pairs by (true, -iou, pred) and take the first.
    order = np.lexsort((o.pj, -iou, o.ti))
    ti_sorted = o.ti[order]
    first = np.ones(order.size, bool)
    first[1:] = ti_sorted[1:] != ti_sorted[:-1]
    best = order[first]
    inter_sum = o.inter[best].sum()
    union_sum = o.union[best].sum()
    paired_true = np.zeros(nt, bool)
    paired_true[o.ti[best]] = True
    used_pred = np.zeros(npred, bool)
    used_pred[o.pj[best]] = True
    union_sum += o.true_area[~paired_true].sum() + o.pred_area[~used_pred].sum()
    return float(inter_sum / union_sum)


def _iou_matches(o: Overlaps, thresh: float = MATCH_IOU) -> np.ndarray:
    """Indices into the pair arrays of pairs with IoU > ``thresh`` (unique when thresh >= 0.5)."""
    return np.flatnonzero(o.iou > thresh)


def panoptic_quality(true: np.ndarray, pred: np.ndarray, table: Overlaps | None = None) -> dict:
    """Panoptic quality of two (H, W) instance maps.

    Returns:
        dict with ``pq``, ``dq``, ``sq`` (floats in [0, 1]) and ``tp``, ``fp``, ``fn`` (ints).
        When both maps are empty pq = dq = sq = 1.0; when there is no TP sq = 0.0.
    """
    o = table if table is not None else overlaps(true, pred)
    nt, npred = o.true_area.size, o.pred_area.size
    m = _iou_matches(o)
    tp = int(m.size)
    fp, fn = npred - tp, nt - tp
    if nt == 0 and npred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(o.iou[m].mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": fp, "fn": fn}


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Pixel Dice of the foregrounds (non-zero pixels) of two (H, W) maps; 1.0 when both empty."""
    t = np.asarray(true) > 0
    p = np.asarray(pred) > 0
    denom = int(t.sum()) + int(p.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(t, p).sum() / denom)


def _prf(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall, F1 from counts (1.0 when there is nothing to find and nothing found)."""
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def instance_scores(true: np.ndarray, pred: np.ndarray) -> dict:
    """Every instance metric of two (H, W) instance maps from one overlap table.

    Args:
        true: (H, W) integer ground-truth instance map (0 = background).
        pred: (H, W) integer predicted instance map (0 = background).

    Returns:
        dict with ``aji``, ``pq``, ``dq``, ``sq``, ``dice``, ``precision``, ``recall``, ``f1``
        (detection at IoU > 0.5), ``tp``, ``fp``, ``fn``, ``n_true``, ``n_pred``.
    """
    o = overlaps(true, pred)
    pq = panoptic_quality(true, pred, o)
    out = {"aji": aji(true, pred, o), **pq, "dice": dice(true, pred)}
    out.update(_prf(pq["tp"], pq["fp"], pq["fn"]))
    out["n_true"] = int(o.true_area.size)
    out["n_pred"] = int(o.pred_area.size)
    return out


def match_points(pred_yx, true_yx, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Match predicted points to true points one to one within ``radius``.

    The matching has the largest possible number of pairs and, among those, the smallest total
    distance: a Hungarian assignment (``scipy.optimize.linear_sum_assignment``) solved
    separately on each connected component of the graph of pairs closer than ``radius``, so
    the cost stays small for thousands of points. A pair at distance exactly ``radius`` counts.

    Args:
        pred_yx: (N, 2) array-like of predicted (y, x) positions in pixels, e.g. the centroids
            of segmented nuclei.
        true_yx: (M, 2) array-like of annotated (y, x) positions in pixels.
        radius: largest matching distance in pixels (3 um is ``3 / mpp`` pixels).

    Points are matched by distance only: the function knows no image extent, so a point outside
    the image (negative or beyond its size) is matched like any other and never raises. Filter
    such points first if they should not count.

    Returns:
        (pred_idx, true_idx): two int64 arrays of equal length K <= min(N, M), sorted by
        ``pred_idx``; ``pred_yx[pred_idx[k]]`` is matched to ``true_yx[true_idx[k]]``.
    """
    p = np.asarray(pred_yx, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true_yx, dtype=np.float64).reshape(-1, 2)
    if not radius > 0:
        raise ValueError(f"radius must be > 0 pixels (got {radius}).")
    # NaN would silently never match (and inf breaks the KD-tree); say which input is bad.
    for name, pts in (("pred_yx", p), ("true_yx", t)):
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"{name} contains NaN or infinite coordinates; drop those points first.")
    empty = np.zeros(0, np.int64)
    if len(p) == 0 or len(t) == 0:
        return empty, empty.copy()
    # The "ndarray" output keeps pairs at distance 0 (the sparse-matrix outputs may drop them).
    pairs = cKDTree(p).sparse_distance_matrix(cKDTree(t), radius, output_type="ndarray")
    if pairs.size == 0:
        return empty, empty.copy()
    pi, tj, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    n, m = len(p), len(t)
    graph = coo_matrix((np.ones(pi.size), (pi, n + tj)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[pi]
    order = np.argsort(edge_comp, kind="stable")
    pi, tj, d, edge_comp = pi[order], tj[order], d[order], edge_comp[order]
    bounds = np.flatnonzero(np.diff(edge_comp)) + 1
    # A non-edge costs more than any full set of edges, so the assignment first maximises the
    # number of pairs, then minimises their summed distance.
    big = (radius + 1.0) * (min(n, m) + 1)
    out_p, out_t = [], []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, pi.size]):
        rows, r_inv = np.unique(pi[lo:hi], return_inverse=True)
        cols, c_inv = np.unique(tj[lo:hi], return_inverse=True)
        if rows.size == 1 or cols.size == 1:
            k = np.argmin(d[lo:hi])
            out_p.append(pi[lo + k : lo + k + 1])
            out_t.append(tj[lo + k : lo + k + 1])
            continue
        cost = np.full((rows.size, cols.size), big)
        cost[r_inv, c_inv] = d[lo:hi]
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < big
        out_p.append(rows[r[ok]])
        out_t.append(cols[c[ok]])
    pred_idx = np.concatenate(out_p)
    true_idx = np.concatenate(out_t)
    order = np.argsort(pred_idx, kind="stable")
    return pred_idx[order], true_idx[order]


def point_detection_scores(pred_yx, true_yx, radius: float) -> dict:
    """Precision, recall and F1 of predicted points against true points within ``radius``.

    Args:
        pred_yx: (N, 2) predicted (y, x) in pixels.
        true_yx: (M, 2) true (y, x) in pixels.
        radius: matching radius in pixels (see :func:`match_points`).

    Returns:
        dict with ``precision``, ``recall``, ``f1`` (floats) and ``tp``, ``fp``, ``fn`` (ints).
    """
    n = len(np.asarray(pred_yx).reshape(-1, 2))
    m = len(np.asarray(true_yx).reshape(-1, 2))
    pred_idx, _ = match_points(pred_yx, true_yx, radius)
    tp = int(pred_idx.size)
    return _prf(tp, n - tp, m - tp)

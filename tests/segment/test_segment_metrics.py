"""Segmentation metrics on hand-built cases with known answers and against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_uam.segment import metrics
from napari_uam.segment import metrics as M


def _square(shape, y, x, size):
    m = np.zeros(shape, bool)
    m[y : y + size, x : x + size] = True
    return m


def _two_nuclei():
    lab = np.zeros((40, 40), np.int32)
    lab[_square(lab.shape, 2, 2, 10)] = 1
    lab[_square(lab.shape, 20, 20, 10)] = 7  # ids need not be consecutive
    return lab


def test_perfect_prediction_scores_one():
    gt = _two_nuclei()
    pred = np.where(gt == 7, 3, np.where(gt == 1, 9, 0))  # same nuclei, other ids
    s = M.instance_scores(gt, pred)
    for key in ("aji", "pq", "dq", "sq", "dice", "precision", "recall", "f1"):
        assert s[key] == pytest.approx(1.0), key
    assert (s["tp"], s["fp"], s["fn"], s["n_true"], s["n_pred"]) == (2, 0, 0, 2, 2)


def test_nucleus_split_in_two_known_answers():
    # One 10x10 true nucleus, predicted as two 10x5 halves.
    gt = np.zeros((20, 20), np.int32)
    gt[5:15, 5:15] = 1
    pred = np.zeros_like(gt)
    pred[5:15, 5:10] = 1
    pred[5:15, 10:15] = 2
    s = M.instance_scores(gt, pred)
    # AJI: best pair has I=50, U=100; the other half is an unused prediction (+50).
    assert s["aji"] == pytest.approx(50 / 150)
    # Each half has IoU exactly 0.5, which is not > 0.5: no TP, 2 FP, 1 FN.
    assert (s["tp"], s["fp"], s["fn"]) == (0, 2, 1)
    assert s["pq"] == 0.0 and s["dq"] == 0.0 and s["sq"] == 0.0
    assert s["dice"] == pytest.approx(1.0)


def test_unequal_split_one_tp():
    gt = np.zeros((20, 20), np.int32)
    gt[0:10, 0:10] = 1
    pred = np.zeros_like(gt)
    pred[0:10, 0:8] = 1  # IoU 0.8
    pred[0:10, 8:10] = 2  # IoU 0.2
    s = M.instance_scores(gt, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["dq"] == pytest.approx(1 / 1.5)
    assert s["sq"] == pytest.approx(0.8)
    assert s["pq"] == pytest.approx(0.8 / 1.5)
    assert s["aji"] == pytest.approx(80 / (100 + 20))
    assert s["f1"] == pytest.approx(2 / 3)


def test_merge_two_nuclei_into_one():
    gt = np.zeros((10, 20), np.int32)
    gt[:, :10] = 1
    gt[:, 10:] = 2
    pred = (gt > 0).astype(np.int32)
    s = M.instance_scores(gt, pred)
    # Both true nuclei take the merged prediction (reuse allowed): I = 100 + 100, U = 200 + 200.
    assert s["aji"] == pytest.approx(0.5)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 2)


def test_empty_maps():
    z = np.zeros((16, 16), np.int32)
    one = z.copy()
    one[2:6, 2:6] = 1
    assert M.instance_scores(z, z)["aji"] == 1.0
    assert M.instance_scores(z, z)["pq"] == 1.0
    s = M.instance_scores(one, z)
    assert s["aji"] == 0.0 and s["pq"] == 0.0 and s["recall"] == 0.0 and s["dice"] == 0.0
    s = M.instance_scores(z, one)
    assert s["aji"] == 0.0 and s["precision"] == 0.0
    with pytest.raises(ValueError):
        M.instance_scores(z, np.zeros((4, 4), np.int32))


# --- slow, obviously-correct reference implementations -----------------------------------


def _ref_scores(gt, pred):
    t_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    tm = {i: gt == i for i in t_ids}
    pm = {j: pred == j for j in p_ids}
    inter = np.zeros((len(t_ids), len(p_ids)))
    union = np.zeros_like(inter)
    for a, i in enumerate(t_ids):
        for b, j in enumerate(p_ids):
            inter[a, b] = np.logical_and(tm[i], pm[j]).sum()
            union[a, b] = np.logical_or(tm[i], pm[j]).sum()
    iou = inter / np.maximum(union, 1)
    c = u = 0.0
    used = set()
    for a, i in enumerate(t_ids):
        if inter[a].max() > 0:
            b = int(np.argmax(iou[a]))
            c += inter[a, b]
            u += union[a, b]
            used.add(b)
        else:
            u += tm[i].sum()
    for b, j in enumerate(p_ids):
        if b not in used:
            u += pm[j].sum()
    tp_iou = iou[iou > 0.5]
    tp = tp_iou.size
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = tp_iou.mean() if tp else 0.0
    return {"aji": c / u, "pq": dq * sq, "dq": dq, "sq": sq, "tp": tp}


@pytest.fixture(scope="module")
def consep_crop(consep_dir):
    from PIL import Image

    gt = np.asarray(Image.open(consep_dir / "train_3_inst.png")).astype(np.int32)[300:500, 300:500]
    from napari_uam.segment import segment

    rgb = np.asarray(Image.open(consep_dir / "train_3.jpg").convert("RGB"))[300:500, 300:500]
    pred = segment(rgb, mpp=0.25, backend="watershed")
    return gt, pred


def test_metrics_match_reference_on_real_data(consep_crop):
    gt, pred = consep_crop
    assert gt.max() > 10 and pred.max() > 10
    fast = M.instance_scores(gt, pred)
    ref = _ref_scores(gt, pred)
    for key in ("aji", "pq", "dq", "sq"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-12), key
    assert fast["tp"] == ref["tp"]
    # Swapping roles is also consistent with the reference.
    assert M.aji(pred, gt) == pytest.approx(_ref_scores(pred, gt)["aji"], abs=1e-12)


# --- point matching -----------------------------------------------------------------------


def test_match_points_is_one_to_one_and_optimal():
    # Greedy nearest would pair pred 0 with true 0 (distance 1) and leave pred 1 unmatched;
    # the optimal matching pairs both.
    pred = np.array([[0.0, 1.0], [0.0, -1.5]])
    true = np.array([[0.0, 0.0], [0.0, 2.5]])
    pi, tj = M.match_points(pred, true, radius=2.0)
    assert pi.tolist() == [0, 1] and tj.tolist() == [1, 0]


def test_match_points_radius_and_edges():
    pred = np.array([[10.0, 10.0], [50.0, 50.0], [10.0, 10.0]])
    true = np.array([[10.0, 13.0], [90.0, 90.0]])
    pi, tj = M.match_points(pred, true, radius=3.0)  # distance exactly 3 counts
    assert len(pi) == 1 and tj.tolist() == [0] and pi[0] in (0, 2)
    assert M.match_points(pred, true, radius=2.9)[0].size == 0
    e0, e1 = M.match_points(np.zeros((0, 2)), true, 3.0)
    assert e0.size == e1.size == 0 and e0.dtype == np.int64
    with pytest.raises(ValueError):
        M.match_points(pred, true, radius=0)
    s = M.point_detection_scores(pred, true, 3.0)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 2, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(0.5)


def test_match_points_identical_sets_and_many_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 500, size=(2000, 2))
    pi, tj = M.match_points(pts, pts, radius=3.0)
    # Each point is nearest to itself, and the optimum (total distance 0) is the identity.
    assert len(pi) == 2000
    assert np.array_equal(pi, tj)
    jitter = pts + rng.normal(0, 0.5, size=pts.shape)
    s = M.point_detection_scores(jitter, pts, 3.0)
    assert s["f1"] > 0.99


def test_centroids():
    lab = np.zeros((10, 10), np.int32)
    lab[0:2, 0:2] = 5
    lab[4:7, 6:9] = 2
    c = M.centroids(lab)
    assert c.tolist() == [[5.0, 7.0], [0.5, 0.5]]  # ordered by id: 2 then 5
    assert M.centroids(np.zeros((4, 4), np.int32)).shape == (0, 2)


# ------------------------------------------- point matching: odd points and random sets (issue 9)
def test_points_outside_the_image_are_matched_by_distance():
    true = np.array([[-5.0, -5.0], [10.0, 10.0], [1e6, 3.0]])
    pred = np.array([[-4.0, -5.0], [1e6 + 1.0, 3.0], [500.0, 500.0]])
    p, t = metrics.match_points(pred, true, radius=2.0)
    assert p.tolist() == [0, 1] and t.tolist() == [0, 2]
    for bad in (np.array([[np.nan, 1.0]]), np.array([[np.inf, 1.0]])):
        with pytest.raises(ValueError, match="pred_yx contains NaN or infinite"):
            metrics.match_points(bad, true, 2.0)
        with pytest.raises(ValueError, match="true_yx contains NaN or infinite"):
            metrics.point_detection_scores(pred, bad, 2.0)


_points = st.lists(st.tuples(st.floats(-20, 60, allow_nan=False), st.floats(-20, 60, allow_nan=False)), max_size=25)


@settings(max_examples=25, deadline=None)
@given(pred=_points, true=_points, radius=st.floats(0.5, 12.0))
def test_match_points_properties(pred, true, radius):
    p = np.array(pred, dtype=float).reshape(-1, 2)
    t = np.array(true, dtype=float).reshape(-1, 2)
    pi, tj = metrics.match_points(p, t, radius)
    assert len(pi) == len(tj) <= min(len(p), len(t))
    assert len(set(pi.tolist())) == len(pi) and len(set(tj.tolist())) == len(tj)  # one to one
    if len(pi):
        assert np.all(np.linalg.norm(p[pi] - t[tj], axis=1) <= radius + 1e-9)
    # Maximal: no unmatched prediction lies within the radius of an unmatched true point.
    free_p = np.setdiff1d(np.arange(len(p)), pi)
    free_t = np.setdiff1d(np.arange(len(t)), tj)
    if free_p.size and free_t.size:
        d = np.linalg.norm(p[free_p][:, None] - t[free_t][None], axis=-1)
        assert d.min() > radius

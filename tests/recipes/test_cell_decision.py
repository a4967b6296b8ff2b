"""research/cells/decision.py: the threshold that LOSO picks, the offset that carries it, and the
shipped checkpoint / docs that it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_uam.classify.checkpoint import default_weights_path, load_classifier
from research.cells import decision as D

REPO = Path(__file__).resolve().parents[2]


def _record(held, seed, p, y):
    return {"held": held, "seed": seed, "p": list(p), "y": list(y)}


def test_threshold_of_the_best_worst_source_is_picked():
    # Source a: tumor cells at 0.62-0.7, others at 0.4: every threshold in [0.4, 0.62) is right.
    # Source b: tumor cells at 0.9, others at 0.55-0.65: only thresholds in [0.65, 0.9) are right.
    a = _record("a", 0, [0.62, 0.7, 0.4, 0.4], [1, 1, 0, 0])
    b = _record("b", 0, [0.9, 0.9, 0.55, 0.65], [1, 1, 0, 0])
    scores = D.score_thresholds([a, b], grid=(0.5, 0.6, 0.65, 0.7))
    by_t = {s.threshold: s for s in scores}
    assert by_t[0.5].accuracy == {"a": 1.0, "b": 0.5}
    assert by_t[0.6].accuracy == {"a": 1.0, "b": 0.75}
    assert by_t[0.65].accuracy == {"a": 0.75, "b": 1.0}  # 0.65 is not above 0.65: b's second 0 is right
    assert by_t[0.7].accuracy == {"a": 0.5, "b": 1.0}
    pick = D.choose(scores)
    # 0.6 and 0.65 tie on the worst source (0.75) and the mean (0.875): the one nearer 0.5 wins.
    assert pick.threshold == 0.6 and pick.worst == 0.75 and pick.worst_source == "b"
    # Seeds are averaged per source before the worst is taken.
    seed1 = _record("b", 1, [0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0])
    assert D.score_thresholds([a, b, seed1], grid=(0.5,))[0].accuracy["b"] == pytest.approx(0.75)


def test_offset_moves_the_decision_to_the_threshold():
    b = D.offset_for(0.7, 2, 1)
    assert b[0] == 0.0 and b[1] == pytest.approx(-np.log(0.7 / 0.3))
    p = np.array([0.69, 0.71])
    shifted = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + b[1])))
    assert shifted[0] < 0.5 < shifted[1]


def test_shipped_checkpoint_carries_the_decision_the_docs_report():
    js = REPO / "docs" / "results_cells_decision.json"
    if not js.is_file():
        pytest.skip("docs/results_cells_decision.json absent: python -m research.cells.decision has not run")
    result = json.loads(js.read_text())
    ck = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    cal = ck["calibration"]
    assert cal["decision_threshold_raw"] == result["pick"]["threshold"]
    assert cal["logit_offset"] == pytest.approx(result["offset"])
    assert cal["temperature"] == pytest.approx(result["temperature"])
    clf = load_classifier(device="cpu")
    assert clf.logit_offset.tolist() == pytest.approx(result["offset"])
    # docs/results.md holds exactly the section the JSON renders.
    start, end = D.SECTION
    inner = D.render(result).removeprefix(start).removesuffix(end).strip()
    assert f"{start}\n{inner}\n{end}" in (REPO / "docs" / "results.md").read_text()


def test_a_threshold_that_costs_tumor_f1_is_not_picked():
    # Source b gains accuracy from 0.8 only by missing half its tumor cells (F1 falls 0.8 -> 0.67).
    a = _record("a", 0, [0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0])
    b = _record("b", 0, [0.9, 0.7, 0.6, 0.1, 0.1, 0.1], [1, 1, 0, 0, 0, 0])
    scores = D.score_thresholds([a, b], grid=(0.5, 0.8))
    by_t = {s.threshold: s for s in scores}
    assert by_t[0.8].worst == by_t[0.5].worst  # b: 5/6 right at both thresholds
    assert D.mean_f1(by_t[0.8]) < D.mean_f1(by_t[0.5]) - D.F1_SLACK
    assert D.choose(scores).threshold == 0.5

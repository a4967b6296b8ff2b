"""The segmentation bench's shared scorer and its docs renderer (no measuring here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def test_score_labels_of_the_truth_is_perfect(shared_data):
    from research.segmentation import nuclei_sets as N
    from research.segmentation.loso import score_labels

    im = N.images("gbm40", shared_data)[0]
    gt = im.instances()
    s = score_labels(gt, im)
    assert s["aji"] == pytest.approx(1.0) and s["pq"] == pytest.approx(1.0) and s["dice"] == pytest.approx(1.0)
    assert s["fp"] == s["fn"] == 0 and s["tp"] == s["n_true"] == s["n_pred"] > 0
    pts = N.images("brca_m2c", shared_data)[0]
    assert set(score_labels(gt[:10, :10] * 0, pts)) == {"tp", "fp", "fn"}


def test_page_prints_the_json_numbers():
    """Every LOSO row of docs/segmentation_loso.json and every v2 row of the CPU JSON is on the page."""
    import _segmentation_doc as D

    if not (REPO / "docs" / "segmentation_bench_cpu.json").is_file():
        pytest.skip("docs/segmentation_bench_cpu.json not written yet")
    inp = D.Inputs()
    text = D.page(inp)
    loso = json.loads((REPO / "docs" / "segmentation_loso.json").read_text())
    per = loso["loso_tables"][loso["post_choice"]]["per_source"]
    for s, row in per.items():
        line = next(line for line in text.splitlines() if line.startswith(f"| {s} |"))
        assert f"{row['f1']:.3f}" in line and f"{inp.every['v2'][s]['f1']:.3f}" in line, line
        if "aji" in row:
            assert f"{row['aji']:.3f}" in line
    assert "in distribution (trained on CoNSeP 1-20)" in text
    assert "**not met**" in text or "**no**" in text  # the colon target is not met by LOSO
    assert "No JPEG-compression augmentation" in text

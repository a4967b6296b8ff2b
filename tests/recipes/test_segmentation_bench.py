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


def test_v4_section_comes_from_its_json():
    """The recipe-v4 section is computed from a LOSO JSON: rows, mean / worst, the rule's verdict; absent, no section."""
    import copy

    import _segmentation_doc as D

    if not (REPO / "docs" / "segmentation_bench_cpu.json").is_file():
        pytest.skip("docs/segmentation_bench_cpu.json not written yet")
    inp = D.Inputs()
    inp.v4 = None
    text = D.page(inp)
    assert "## Recipe v4" not in text and "Recipe v4 (v3 + JPEG" not in text

    def section(v4):
        inp.v4 = v4
        lines = D.page(inp).splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("## Recipe v4"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
        return lines[start:end], "\n".join(lines)

    v3 = inp.loso
    per3 = v3["loso_tables"][v3["post_choice"]]["per_source"]
    worse = copy.deepcopy(v3)  # v3's own numbers, CoNSeP 0.02 lower: worst AJI below v3's, so v3 stays
    per = worse["loso_tables"][worse["post_choice"]]["per_source"]
    per["consep"]["aji"] -= 0.02
    sec, page = section(worse)
    assert sec[0].endswith("measured, not shipped")
    row = next(line for line in sec if line.startswith("| consep |"))
    assert f"| {per3['consep']['aji']:.3f} | {per['consep']['aji']:.3f} | -0.020 |" in row
    assert f"| {per['consep']['recall']:.3f} |" in row
    worst = next(line for line in sec if line.startswith("| **worst** |"))
    assert f"{per['consep']['aji']:.3f} | -0.020 |" in worst
    assert "**Decision: v3 stays.**" in "\n".join(sec)
    assert "changes none of these verdicts" in page and "so it did not ship" in page

    better = copy.deepcopy(v3)  # every source 0.05 higher: passes the rule
    for s in better["loso_tables"][better["post_choice"]]["per_source"].values():
        if "aji" in s:
            s["aji"] += 0.05
    sec, page = section(better)
    assert sec[0].endswith("passes the shipping rule, not shipped yet")
    assert "**Decision: v4 passes the rule**" in "\n".join(sec)
    mean = next(line for line in sec if line.startswith("| **mean** |"))
    assert "| +0.050 |" in mean


def test_wide_and_stain_norm_sections_come_from_their_json():
    """The wider-network and stain-normalisation sections print their JSON's numbers and verdict;
    absent JSON, no section."""
    import _segmentation_doc as D

    if not (REPO / "docs" / "segmentation_bench_cpu.json").is_file():
        pytest.skip("docs/segmentation_bench_cpu.json not written yet")
    inp = D.Inputs()
    if inp.wide is not None:
        text = "\n".join(D.wide_section(inp))
        per = inp.wide["loso_tables"][inp.wide["post_choice"]]["per_source"]
        line = next(ln for ln in text.splitlines() if ln.startswith("| consep |"))
        assert f"{per['consep']['aji']:.3f}" in line
        worst = min(v["aji"] for v in per.values() if v.get("aji") is not None)
        mean3, worst3 = D._agg(inp.loso_per, inp.sources)["aji"]
        assert ("v3 stays" in text) == (worst <= worst3 or D._agg(per, inp.sources)["aji"][0] < mean3 - D.V4_MEAN_SLACK)
    if inp.stain_norm is not None:
        text = "\n".join(D.stain_norm_section(inp))
        for s, row in inp.stain_norm["per_source"].items():
            line = next(ln for ln in text.splitlines() if ln.startswith(f"| {s} |"))
            assert f"{row['normalised']['f1']:.3f}" in line and f"{row['as_is']['f1']:.3f}" in line
    inp.wide, inp.stain_norm = None, None
    text = D.page(inp)
    assert "## A wider U-Net" not in text and "## Stain normalisation at inference" not in text

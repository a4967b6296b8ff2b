"""Tissue detection at low resolution: glass and pen strokes are skipped, tissue is not.

On a slide that is half real tissue (CoNSeP fields, 40x) and half glass crossed by a blue pen
stroke, the tiles of glass and pen are never segmented, the tissue area is that of the fields,
and the nuclei are those of the tissue alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_uam.batch import tiles
from napari_uam.tissue import TissueParams, detect_tissue

MPP = 0.25  # CoNSeP
FIELDS = [3, 4, 7, 9]  # whole-tissue fields (no marking ink of their own)


def _glass(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Empty slide glass: near-white, slightly bluish, with sensor noise."""
    rng = np.random.default_rng(seed)
    base = np.array([240, 238, 244], np.int16)
    return np.clip(base + rng.integers(-4, 5, (h, w, 3)), 0, 255).astype(np.uint8)


def _stroke(img: np.ndarray, colour, x0: int, x1: int, width: int, seed: int = 1) -> None:
    """A wavy pen stroke across the rows of ``img[:, x0:x1]``, in place."""
    rng = np.random.default_rng(seed)
    h = img.shape[0]
    yy, xx = np.mgrid[:h, x0:x1]
    centre = (x0 + x1) / 2 + (x1 - x0) / 4 * np.sin(yy / h * 2 * np.pi)
    ink = np.abs(xx - centre) < width / 2
    noisy = np.clip(np.array(colour, np.int16) + rng.integers(-12, 13, (int(ink.sum()), 3)), 0, 255)
    img[:, x0:x1][ink] = noisy.astype(np.uint8)


def test_detect_tissue_leaves_out_glass_pen_and_dust(consep_mosaic):
    tissue = consep_mosaic(FIELDS[:2], 400, per_row=2)  # 400 x 800 of tissue
    img = np.concatenate([tissue, _glass(400, 800)], axis=1)
    _stroke(img, (30, 60, 170), 850, 1050, 60)  # blue
    _stroke(img, (40, 150, 70), 1150, 1350, 60)  # green
    img[100:220, 1400:1520] = 25  # a black blot (30 x 30 um)
    img[300:304, 1500:1504] = (150, 60, 140)  # a speck of debris
    img[200:230, 300:330] = 242  # a small hole in the tissue (a lumen)
    mask = detect_tissue(img, 1, MPP)
    assert mask.tissue[:, :780].mean() > 0.97  # the fields, lumen filled
    assert not mask.tissue[:, 820:].any()  # glass, both strokes, blot and speck
    assert mask.pen[:, 850:1350].mean() > 0.2 and mask.pen[100:220, 1400:1520].all()
    assert mask.area_mm2 == pytest.approx(400 * 800 * MPP**2 / 1e6, rel=0.03)
    assert mask.fraction == pytest.approx(0.5, abs=0.02)
    # The margin lets a tile just beside the tissue through; one far from it is glass.
    assert mask.any_in((0, 400, 790, 830)) and not mask.any_in((0, 400, 1100, 1600))
    # On an overview (every 4th pixel) the same mask, in image coordinates.
    coarse = detect_tissue(img[::4, ::4], 4, MPP)
    assert coarse.area_mm2 == pytest.approx(mask.area_mm2, rel=0.03)
    assert coarse.any_in((0, 400, 0, 100)) and not coarse.any_in((0, 400, 1100, 1600))
    summary = coarse.summary()
    assert set(summary) == {"tissue_area_mm2", "tissue_fraction", "pen_fraction", "tissue_mask_step"}


def test_hematoxylin_is_not_pen(consep_mosaic):
    """Dark purple nuclei and pale eosin are tissue: nothing of a full field is taken for ink."""
    field = consep_mosaic([3, 7, 9, 13], 500, per_row=2)
    for step in (1, 4):
        mask = detect_tissue(field[::step, ::step], step, MPP, TissueParams())
        assert not mask.pen.any() and mask.fraction > 0.97


def _cells(path, tmp, name):
    stage = tmp / name
    stage.mkdir()
    res = tiles.run_tiled(
        path, MPP, stage, name, command="measure", formats=("parquet",), backend="learned", tile=512, device="cpu"
    )
    return res, pd.read_parquet(res.outputs["parquet"])


def test_glass_and_pen_tiles_are_skipped_and_the_cells_are_the_tissues(tmp_path, consep_mosaic):
    tissue = consep_mosaic(FIELDS, 512, per_row=2)  # 1024 x 1024
    glass = _glass(1024, 1536)
    _stroke(glass, (30, 60, 170), 700, 1400, 220)  # a 55 um wide stroke over the far glass
    slide = np.concatenate([tissue, glass], axis=1)  # 1024 x 2560
    kw = {"tile": (256, 256), "compression": "zlib"}
    tifffile.imwrite(tmp_path / "slide.tif", slide, **kw)
    tifffile.imwrite(tmp_path / "tissue.tif", tissue, **kw)

    res, cells = _cells(tmp_path / "slide.tif", tmp_path, "slide")
    alone, ref = _cells(tmp_path / "tissue.tif", tmp_path, "alone")
    rec = res.provenance["tissue_detection"]
    # Grid 2 x 5 of 512: columns 0-1 tissue, column 2 has tissue in its halo, 3-4 glass and pen.
    assert res.provenance["n_tiles"] == 10 and rec["tiles_skipped"] == 4
    assert rec["tissue_area_mm2"] == pytest.approx(1024 * 1024 * MPP**2 / 1e6, rel=0.03)
    assert rec["tissue_fraction"] == pytest.approx(0.4, abs=0.015) and rec["pen_fraction"] > 0.02
    assert alone.provenance["tissue_detection"]["tiles_skipped"] == 0

    # The same nuclei as the tissue alone: all within a receptive field of the glass' edge
    # identical (position and area), and none found on the glass.
    assert cells["x"].max() < 1024 and abs(len(cells) - len(ref)) <= 0.01 * len(ref)

    def key(t):
        inner = t[t["x"] < 1024 - 160]
        return set(zip(inner["y"].round(2), inner["x"].round(2), inner["area_um2"].round(4)))

    assert key(cells) == key(ref) and len(key(ref)) > 300

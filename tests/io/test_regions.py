"""The tumor region as QuPath annotations and its area: polygons with holes that enclose
exactly the mask's pixels, written by the real CLI beside the mask TIFF, never overwritten
without --overwrite, and the tumor-area fraction in the run's provenance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.measure import points_in_poly

from napari_uam.io.regions import mask_polygons, tumor_area, tumor_geojson, write_tumor_geojson

REPO = Path(__file__).resolve().parents[2]


def _signed_area(ring) -> float:
    r = np.asarray(ring)
    return 0.5 * float(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1]))


def rasterise(doc: dict, shape) -> np.ndarray:
    """Pixels whose centre (c + 0.5, r + 0.5) lies inside an annotation (holes excluded)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    out = np.zeros(pts.shape[0], bool)
    for f in doc["features"]:
        rings = f["geometry"]["coordinates"]
        inside = points_in_poly(pts, np.asarray(rings[0]))
        for hole in rings[1:]:
            inside &= ~points_in_poly(pts, np.asarray(hole))
        out |= inside
    return out.reshape(shape)


def _ring_mask():
    """A tumor ring around a lumen, an island inside the lumen, a separate blob, one pixel."""
    m = np.zeros((60, 80), np.uint8)
    m[5:45, 5:45] = 1
    m[15:35, 15:35] = 0  # hole
    m[22:27, 22:27] = 1  # island inside the hole: a part of its own
    m[10:20, 55:75] = 1
    m[55, 70] = 1
    return m


@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_polygons_keep_holes_and_enclose_exactly_the_mask(tolerance):
    m = _ring_mask()
    doc = tumor_geojson(m, mpp=0.5, tolerance=tolerance)
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection" and len(feats) == 4
    for f in feats:
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] == "Tumor"
        rings = f["geometry"]["coordinates"]
        assert all(r[0] == r[-1] and len(r) >= 4 for r in rings)
        assert _signed_area(rings[0]) > 0 and all(_signed_area(h) < 0 for h in rings[1:])
    assert [len(f["geometry"]["coordinates"]) for f in feats] == [2, 1, 1, 1]  # the ring has its hole
    # Pixel centres inside the polygons are exactly the tumor pixels.
    np.testing.assert_array_equal(rasterise(doc, m.shape), m > 0)
    # The ring's area excludes its lumen (square of 40 px minus 20 px, corners cut by the outline).
    area = feats[0]["properties"]["measurements"]["area_um2"] / 0.25
    assert area == pytest.approx(40 * 40 - 20 * 20, rel=0.03)


def test_coordinates_are_image_pixels_with_pixel_corners_at_integers():
    m = np.zeros((10, 10), np.uint8)
    m[2:5, 3:7] = 1  # rows 2-4, columns 3-6
    (rings,) = mask_polygons(m, tolerance=0)
    xs, ys = np.asarray(rings[0])[:, 0], np.asarray(rings[0])[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3.0, 7.0, 2.0, 5.0)


def test_empty_mask_gives_no_annotation_and_the_file_is_not_replaced(tmp_path):
    assert tumor_geojson(np.zeros((5, 5)))["features"] == []
    path = tmp_path / "t_tumor.geojson"
    write_tumor_geojson(_ring_mask(), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_tumor_geojson(np.zeros((5, 5)), path)
    assert path.read_bytes() == before


def test_tumor_area_fractions():
    m = np.zeros((10, 20), bool)
    m[:5, :5] = True
    rgb = np.full((10, 20, 3), 255, np.uint8)
    rgb[:, :10] = (150, 80, 160)  # tissue in the left half
    a = tumor_area(m, rgb, mpp=2.0)
    assert a.tumor_area_fraction == pytest.approx(25 / 200)
    assert a.tumor_tissue_fraction == pytest.approx(25 / 100)
    assert a.tumor_area_mm2 == pytest.approx(25 * 4 / 1e6)
    assert a.tumor_regions == 1


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    return subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_writes_the_region_as_qupath_annotations_and_its_area(tmp_path, regions_dir):
    from napari_uam.tumor import tumor_weights_available

    if not tumor_weights_available():
        pytest.skip("tumor-mask weights not installed")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(regions_dir / "camelyon" / "10679.jpg", src / "node.jpg")  # mostly metastasis
    out = tmp_path / "out"
    argv = ["classify", str(src), "--mpp", "0.75", "--out", str(out), "--device", "cpu", "--quiet"]
    r = _cli(*argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    mask = tifffile.imread(out / "node_tumor_mask.tif")
    doc = json.loads((out / "node_tumor.geojson").read_text())
    assert mask.shape == (512, 512) and mask.any()
    assert {f["properties"]["objectType"] for f in doc["features"]} == {"annotation"}
    assert {f["properties"]["classification"]["name"] for f in doc["features"]} == {"Tumor"}
    back = rasterise(doc, mask.shape)
    iou = (back & (mask > 0)).sum() / (back | (mask > 0)).sum()
    assert iou > 0.99, iou  # up to the 0.5 px simplification of the outlines
    # The tumor-area fraction: manifest, done marker, parquet provenance and table attrs agree.
    frac = float((mask > 0).mean())
    manifest = json.loads((out / "napari_uam_run.json").read_text())
    (img,) = manifest["images"]
    assert img["tumor_area_fraction"] == pytest.approx(frac)
    assert img["outputs"]["tumor_geojson"] == "node_tumor.geojson"
    done = json.loads((out / "node.done.json").read_text())
    assert done["provenance"]["tumor_area_fraction"] == pytest.approx(frac)
    assert 0 < done["provenance"]["tumor_tissue_fraction"] <= 1
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(out / "node_cells.parquet").metadata[b"napari_uam"])
    assert meta["attrs"]["tumor_area_fraction"] == pytest.approx(frac)
    assert meta["provenance"]["tumor_area_mm2"] == pytest.approx((mask > 0).sum() * 0.75**2 / 1e6)
    assert isinstance(pd.read_parquet(out / "node_cells.parquet"), pd.DataFrame)

    # A rerun skips the image and leaves the annotations as they are.
    stamp = (out / "node_tumor.geojson").stat().st_mtime_ns
    r = _cli(*argv, cwd=tmp_path)
    assert r.returncode == 0 and (out / "node_tumor.geojson").stat().st_mtime_ns == stamp
    assert json.loads((out / "napari_uam_run.json").read_text())["images"][0]["tumor_area_fraction"] == pytest.approx(
        frac
    )
    # Without its marker the image is redone, but an existing annotation file is not replaced...
    (out / "node.done.json").unlink()
    (out / "node_tumor.geojson").write_text('{"mine": true}')
    r = _cli(*argv, cwd=tmp_path)
    assert r.returncode == 1 and "node_tumor.geojson" in r.stderr
    assert json.loads((out / "node_tumor.geojson").read_text()) == {"mine": True}
    # ...unless --overwrite.
    r = _cli(*argv, "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "node_tumor.geojson").read_text())["type"] == "FeatureCollection"

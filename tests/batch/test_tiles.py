"""Large images in tiles with halos, on mosaics of real CoNSeP fields (40x, 0.25 um/px).

Tiled and one-piece processing must give the same nuclei: the same pixels, none twice, none
cut at a seam; the same features for each; and the command line must tile large images
itself and leave nothing half-written when stopped.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_uam import batch, pipeline
from napari_uam.batch import tiles
from napari_uam.cli import main
from napari_uam.segment import segment

MPP = 0.25  # CoNSeP


def _same_partition(a: np.ndarray, b: np.ndarray) -> dict:
    """Compare two label images: identical up to renumbering, and IoU matching statistics."""
    fg = (a > 0) | (b > 0)
    pairs, inter = np.unique(np.stack([a[fg], b[fg]], 1), axis=0, return_counts=True)
    na, nb = len(np.unique(a)) - 1, len(np.unique(b)) - 1
    area_a = dict(zip(*np.unique(a[a > 0], return_counts=True)))
    area_b = dict(zip(*np.unique(b[b > 0], return_counts=True)))
    both = (pairs > 0).all(1)
    iou = np.array([i / (area_a[x] + area_b[y] - i) for (x, y), i in zip(pairs[both], inter[both])])
    matched = pairs[both][iou > 0.5]
    return {
        "identical": bool(len(pairs) == na == nb and both.all()),
        "n_a": na,
        "n_b": nb,
        "matched": len(matched),
        "a_twice": len(matched) - len(np.unique(matched[:, 1])),
        "mapping": dict(map(tuple, matched)),
    }


def _run(path, stage_dir, stem, backend, tile, command="measure", formats=("tif", "parquet", "geojson")):
    stage_dir.mkdir()
    return tiles.run_tiled(
        path, MPP, stage_dir, stem, command=command, formats=formats, backend=backend, tile=tile, device="cpu"
    )


def test_region_reader_reads_what_the_file_holds(tmp_path, consep_mosaic):
    img = consep_mosaic([1, 2], 300)
    for name, kw in {
        "plain.tif": {},
        "tiled.tif": {"tile": (64, 64), "compression": "zlib"},
        "strips.tif": {"compression": "zlib", "rowsperstrip": 37},
    }.items():
        tifffile.imwrite(tmp_path / name, img, **kw)
        reader = tiles.RegionReader(str(tmp_path / name))
        for box in [(0, 300, 0, 600), (17, 211, 59, 401), (250, 300, 590, 600)]:
            np.testing.assert_array_equal(reader.read(*box), img[box[0] : box[1], box[2] : box[3]])
    assert tiles.probe(tmp_path / "tiled.tif")[:2] == (300, 600)


def test_watershed_tiled_equals_one_piece(tmp_path, consep_mosaic):
    img = consep_mosaic([1, 2, 3, 4], 700)  # 1400 x 1400, 16 tiles of 352 + halo 192
    path = tmp_path / "mosaic.tif"
    tifffile.imwrite(path, img, tile=(256, 256), compression="zlib")
    res = _run(path, tmp_path / "stage", "mosaic", "watershed", tile=352)
    prov = res.provenance
    assert prov["n_tiles"] == 16 and prov["cut_nuclei"] == 0 and prov["seam_conflict_pixels"] == 0
    tiled = tifffile.imread(res.outputs["tif"])
    # One piece with the same image-level white level and threshold: the very same nuclei.
    whole = tiles.watershed_fixed(img, MPP, prov["watershed_white"], prov["watershed_threshold"])
    cmp = _same_partition(tiled, whole)
    assert cmp["identical"], cmp
    assert res.n_cells == cmp["n_b"] > 200
    # The threshold estimated over tiles is the one-piece backend's: nearly all nuclei match.
    auto = _same_partition(tiled, segment(img, MPP, backend="watershed"))
    assert auto["matched"] >= 0.97 * auto["n_b"] and auto["a_twice"] == 0
    # Each kept nucleus measured on its tile has its one-piece features.
    table = pd.read_parquet(res.outputs["parquet"]).set_index("label")
    ref = pipeline.measure_cells(img, whole, MPP, device="cpu").set_index("label")
    ref = ref.loc[[cmp["mapping"][k] for k in table.index]]
    # The nucleus' own radiomics are the one-piece ones exactly; the stain-normalised, ring and
    # context columns use the whole image's stain estimate from its overview (a subsample, not
    # the full-resolution pixels) and the neighbours inside the halo, so they agree closely.
    exact = [c for c in table.columns if not c.startswith(("norm_", "ring_", "ctx_"))]
    np.testing.assert_allclose(table[exact].to_numpy(float), ref[exact].to_numpy(float), rtol=1e-9, atol=1e-9)
    near = {c: 0.98 for c in table.columns if c.startswith(("norm_", "ring_")) and c.endswith("_Mean")}
    # Every nucleus of the extended tile is measured, so rings and context see the halo.
    near.update({c: 0.98 for c in table.columns if c.startswith("ctx_")})
    for c, r in near.items():
        a, b = table[c].to_numpy(float), ref[c].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        assert np.corrcoef(a[ok], b[ok])[0, 1] > r, c
    # QuPath polygons: one per nucleus, ids the labels of the TIFF.
    gj = json.loads(res.outputs["geojson"].read_text())
    assert sorted(f["properties"]["measurements"]["label"] for f in gj["features"]) == sorted(table.index)


def test_learned_tiled_equals_one_piece(tmp_path, consep_mosaic):
    pytest.importorskip("torch")
    from napari_uam.segment import available_backends

    if "learned" not in available_backends():
        pytest.skip("learned segmentation weights not available")
    img = consep_mosaic([5, 6], 560)  # 560 x 1120: 2 x 4 tiles of 288 + halo 192
    path = tmp_path / "mosaic.tif"
    tifffile.imwrite(path, img)  # uncompressed: read through a memory map
    res = _run(path, tmp_path / "stage", "mosaic", "learned", tile=288, command="segment", formats=("tif",))
    assert res.provenance["n_tiles"] == 8 and res.provenance["cut_nuclei"] == 0
    cmp = _same_partition(tifffile.imread(res.outputs["tif"]), segment(img, MPP, backend="learned"))
    assert cmp["identical"], {k: v for k, v in cmp.items() if k != "mapping"}
    assert cmp["n_a"] > 200


def test_cli_tiles_large_images_and_a_stopped_run_leaves_nothing(tmp_path, consep_mosaic, monkeypatch):
    img = consep_mosaic([7, 8], 640)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(
        folder / "big.tif",
        img,
        tile=(128, 128),
        compression="zlib",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    real = tiles.process_tile
    calls = []

    def dies_on_third(job, tile):
        calls.append(tile)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, tile)

    monkeypatch.setattr(tiles, "process_tile", dies_on_third)
    argv = [
        "classify",
        str(folder),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--tile-size",
        "320",
        "--segmenter",
        "watershed",
        "--quiet",
    ]
    assert main(argv) == 130
    assert sorted(p.name for p in out.iterdir()) == [batch.MANIFEST_NAME]  # no staging left
    monkeypatch.setattr(tiles, "process_tile", real)
    assert main(argv) == 0
    done = json.loads((out / "big.done.json").read_text())
    assert done["provenance"]["tiled"] and done["provenance"]["n_tiles"] == 8
    labels = tifffile.imread(out / "big_nuclei.tif")
    table = pd.read_parquet(out / "big_cells.parquet")
    assert labels.shape == img.shape[:2] and len(table) == done["n_cells"] == labels.max()
    assert sorted(table["label"]) == list(range(1, len(table) + 1))
    assert set(table["class"]) <= {"tumor", "non-tumor"}
    assert len(pd.read_csv(out / "big_cells.csv")) == len(table)
    # Centroids in the table are those of the labels in the TIFF.
    geo = pipeline.cell_geometry(labels, MPP).set_index("label")
    np.testing.assert_allclose(table.set_index("label")[["y", "x"]].to_numpy(), geo[["y", "x"]].to_numpy())
    assert main(argv) == 0  # a second run skips the done image
    assert json.loads((out / batch.MANIFEST_NAME).read_text())["images"][0]["status"] == "skipped"


def test_tiled_image_is_judged_for_domain_like_a_whole_one(tmp_path, consep_mosaic):
    """The trust check ran only on images processed in one piece: a tiled image came back with
    no ``domain`` at all, so a slide from a hospital the model never saw got confident calls
    and no warning. Now the tiles' mean features give the same check as the whole image."""
    import subprocess
    import sys

    img = consep_mosaic([7, 8], 640)
    odd = np.ascontiguousarray(img[..., [2, 0, 1]])  # a stain no hospital uses, same tissue
    folder = tmp_path / "in"
    folder.mkdir()
    for name, im in (("he", img), ("odd", odd)):
        tifffile.imwrite(folder / f"{name}.tif", im, resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    base = [
        sys.executable,
        "-m",
        "napari_uam.cli",
        "classify",
        "--device",
        "cpu",
        "--segmenter",
        "watershed",
        "--quiet",
        "--formats",
        "parquet",
    ]
    whole = subprocess.run(
        base + [str(folder / "he.tif"), "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600
    )
    tiled = subprocess.run(
        base + [str(folder), "--out", str(tmp_path / "tiled"), "--tile-size", "320"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert whole.returncode == 0 and tiled.returncode == 0, whole.stderr + tiled.stderr
    one = json.loads((tmp_path / "whole" / "he.done.json").read_text())["provenance"]["domain"]
    he = json.loads((tmp_path / "tiled" / "he.done.json").read_text())["provenance"]
    assert he["tiled"] and he["n_tiles"] > 1
    dom = he["domain"]
    assert dom["status"] == one["status"] == "in domain"
    assert dom["distance"] == pytest.approx(one["distance"], rel=0.1)  # tiles measure nearly as the whole
    assert dom["n_cells"] == he["n_cells"]
    bad = json.loads((tmp_path / "tiled" / "odd.done.json").read_text())["provenance"]["domain"]
    assert bad["status"] == "out of domain" and bad["distance"] > dom["threshold"]
    assert "odd.tif: This image lies outside the classifier's training data" in tiled.stderr

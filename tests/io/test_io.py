"""Readers and writers: round trips, pixel size from metadata, atomicity, no overwrite."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_uam.errors import InvalidImageError
from napari_uam.io import export_cells, read_image
from napari_uam.io.atomic import atomic_path
from napari_uam.io.napari_reader import get_reader
from napari_uam.io.writers import label_polygons
from napari_uam.sample_data import SAMPLE_MPP, load_sample, sample_image


def _labels():
    lab = np.zeros((40, 50), np.int32)
    lab[5:12, 5:14] = 1
    lab[20:30, 30:45] = 2
    lab[33, 3] = 3  # a one-pixel nucleus still gets a valid polygon
    return lab


def _table(lab):
    ids = np.unique(lab)[1:]
    return pd.DataFrame(
        {
            "label": ids,
            "y": ids * 1.0,
            "x": ids * 2.0,
            "area_um2": ids * 3.0,
            "class": ["tumor", "non-tumor", "tumor"],
            "tumor_probability": [0.9, 0.1, 0.7],
            "f1": [1.0, 2.0, 3.0],
        }
    )


def test_sample_is_rgb_with_pixel_size():
    img = sample_image()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    data, meta, kind = load_sample()[0]
    assert kind == "image" and meta["rgb"] and meta["metadata"]["mpp"] == SAMPLE_MPP


def test_tiff_mpp_from_resolution_and_ome(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, img, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    data, mpp = read_image(p)
    assert np.array_equal(data, img) and mpp == pytest.approx(0.25)
    p2 = tmp_path / "b.ome.tif"
    tifffile.imwrite(p2, img, ome=True, metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    data2, mpp2 = read_image(p2)
    assert data2.shape == (32, 32, 3) and mpp2 == pytest.approx(0.5)


def test_reader_hook_and_bad_files(tmp_path):
    assert get_reader("x.czi") is None
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(InvalidImageError, match="Could not read broken.tif"):
        read_image(bad)
    with pytest.raises(InvalidImageError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_polygons_enclose_each_nucleus():
    lab = _labels()
    polys = label_polygons(lab)
    assert set(polys) == {1, 2, 3}
    for ring in polys.values():
        assert ring[0] == ring[-1] and len(ring) >= 4
    xs = [p[0] for p in polys[2]]
    ys = [p[1] for p in polys[2]]
    assert min(xs) == pytest.approx(29.5) and max(xs) == pytest.approx(44.5)
    assert min(ys) == pytest.approx(19.5) and max(ys) == pytest.approx(29.5)


def test_export_writes_contract_and_refuses_overwrite(tmp_path):
    lab = _labels()
    table = _table(lab)
    out = export_cells(lab, table, tmp_path, "img", provenance={"k": 1}, mpp=0.5)
    assert set(out) == {"tif", "csv", "parquet", "geojson"}
    back = tifffile.imread(out["tif"])
    assert back.shape == lab.shape and np.array_equal(back, lab)
    csv = pd.read_csv(out["csv"])
    assert list(csv.columns[:6]) == ["label", "y", "x", "area_um2", "class", "tumor_probability"]
    assert len(csv) == 3
    assert pd.read_parquet(out["parquet"]).shape == table.shape
    gj = json.loads(out["geojson"].read_text())
    assert len(gj["features"]) == 3
    cls = {f["properties"]["measurements"]["label"]: f["properties"]["classification"]["name"] for f in gj["features"]}
    assert cls == {1: "tumor", 2: "non-tumor", 3: "tumor"}
    before = out["csv"].read_bytes()
    with pytest.raises(FileExistsError, match="Not overwriting"):
        export_cells(lab, table.iloc[:1], tmp_path, "img")
    assert out["csv"].read_bytes() == before


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]

"""Results where people use them (issue 20): the cell table as AnnData, the nuclei as an
OME-Zarr label image, the cells as QuPath detections with their measurements; each read back
with the ecosystem's own reader (``anndata.read_h5ad``, ``ome_zarr.reader``) or checked against
the fields QuPath imports (tests/_qupath.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_uam.cli import main
from napari_uam.io.export import DEFAULT_FORMATS
from napari_uam.sample_data import SAMPLE_PATH

from _cli_run import _env
from _ecosystem import qupath_geojson_problems, read_ome_zarr_labels

anndata = pytest.importorskip("anndata", reason="the export extra (anndata) is not installed")
pytest.importorskip("ome_zarr", reason="the export extra (ome-zarr) is not installed")

STEM = SAMPLE_PATH.name.split(".")[0]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """``napari-uam classify --sample`` with every output format."""
    out = tmp_path_factory.mktemp("interop")
    rc = main(["classify", "--sample", "--out", str(out), "--device", "cpu", "--quiet",
               "--formats", "tif,csv,parquet,geojson,h5ad,zarr"])  # fmt: skip
    assert rc == 0
    return out


def test_cell_table_as_anndata_reads_back_with_anndata(sample_run):
    table = pd.read_parquet(sample_run / f"{STEM}_cells.parquet")
    adata = anndata.read_h5ad(sample_run / f"{STEM}_cells.h5ad")
    assert adata.n_obs == len(table) > 100
    assert list(adata.obs_names) == [str(v) for v in table["label"]]
    features = [c for c in table.columns if c not in adata.obs.columns]
    assert list(adata.var_names) == features and len(features) > 400
    np.testing.assert_allclose(adata.X, table[features].to_numpy(np.float32), rtol=1e-6, equal_nan=True)
    assert list(adata.obs["class"].astype(str)) == list(table["class"])
    np.testing.assert_allclose(adata.obs["tumor_probability"], table["tumor_probability"])
    # squidpy's convention: obsm["spatial"] is (x, y); the pixel size beside it.
    np.testing.assert_allclose(adata.obsm["spatial"], table[["x", "y"]].to_numpy())
    assert adata.uns["spatial_mpp"] == pytest.approx(0.5)
    prov = json.loads(adata.uns["napari_uam"])
    assert prov["n_cells"] == len(table) and prov["model_id"]


def test_nuclei_as_ome_zarr_label_image_reads_back_with_ome_zarr(sample_run):
    labels = tifffile.imread(sample_run / f"{STEM}_nuclei.tif")
    levels, meta = read_ome_zarr_labels(sample_run / f"{STEM}_nuclei.ome.zarr")
    np.testing.assert_array_equal(levels[0], labels)
    assert meta["name"] == "nuclei"
    assert [a["name"] for a in meta["axes"]] == ["y", "x"] and meta["axes"][0]["unit"] == "micrometer"
    assert meta["coordinateTransformations"][0][0]["scale"] == [0.5, 0.5]


def test_cells_geojson_carries_every_measurement_in_qupath_fields(sample_run):
    doc = json.loads((sample_run / f"{STEM}_cells.geojson").read_text())
    assert qupath_geojson_problems(doc, "detection") == []
    table = pd.read_parquet(sample_run / f"{STEM}_cells.parquet").set_index("label", drop=False)
    numeric = [c for c in table.columns if table[c].dtype.kind in "biuf"]
    assert len(doc["features"]) == len(table)
    for f in doc["features"][:25]:
        meas = f["properties"]["measurements"]
        row = table.loc[meas["label"]]
        assert set(meas) == {c for c in numeric if np.isfinite(row[c])}
        # float32 precision (what QuPath keeps), so each value reads back as the float32 it was.
        for c in numeric:
            if c != "label" and np.isfinite(row[c]):
                assert np.float32(meas[c]) == np.float32(row[c]), c
        assert f["properties"]["classification"]["name"] == row["class"]
    assert qupath_geojson_problems(json.loads((sample_run / f"{STEM}_tumor.geojson").read_text()), "annotation") == []


def test_geojson_measurements_can_be_left_out(tmp_path):
    assert main(["classify", "--sample", "--out", str(tmp_path), "--device", "cpu", "--quiet",
                 "--formats", "geojson", "--geojson-measurements", "none"]) == 0  # fmt: skip
    doc = json.loads((tmp_path / f"{STEM}_cells.geojson").read_text())
    assert qupath_geojson_problems(doc, "detection") == []
    assert {tuple(f["properties"]["measurements"]) for f in doc["features"]} == {("label",)}
    assert all("classification" in f["properties"] for f in doc["features"])
    run = json.loads((tmp_path / "napari_uam_run.json").read_text())
    assert run["parameters"]["geojson_measurements"] == "none"


def test_an_export_format_without_its_library_is_refused_before_any_work(tmp_path):
    """Without anndata installed (hidden from the import system in a fresh process), asking
    for h5ad is one actionable line and exit 2, before any image is read or written."""
    code = (
        "import sys; sys.modules['anndata'] = None\n"
        "from napari_uam.cli import main\n"
        f"sys.exit(main(['classify', '--sample', '--out', {str(tmp_path / 'out')!r}, '--formats', 'csv,h5ad']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "anndata" in lines[0] and "napari-uam[export]" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_default_formats_stay_the_four_files():
    assert DEFAULT_FORMATS == ("tif", "csv", "parquet", "geojson")

"""The Dask path gives the serial path's results: a 2-worker local cluster, real H&E images.

One folder holds two 20x BRCA-M2C patches (one task each) and a 40x CoNSeP mosaic processed
in tiles (one task per tile); the cohort table and every output must equal the serial run's.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_uam import batch
from napari_uam.cli import main
from napari_uam.batch.executors import dask_available, make_executor

pytestmark = pytest.mark.skipif(
    not dask_available(),
    reason="the Dask path needs 'distributed' (pip install 'napari-uam[cluster]')",
)


def _tiff(path, rgb, mpp):
    tifffile.imwrite(path, rgb, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


@pytest.fixture
def folder(tmp_path, brca_dir, consep_mosaic):
    d = tmp_path / "in"
    d.mkdir()
    for p in sorted((brca_dir / "val").glob("*.jpg"), key=lambda p: p.stat().st_size)[:2]:
        _tiff(d / f"{batch.image_stem(p)}.tif", np.asarray(Image.open(p).convert("RGB")), 0.5)
    _tiff(d / "mosaic.tif", consep_mosaic((9, 10), 500), 0.25)
    return d


@pytest.mark.slow
def test_two_local_workers_equal_serial(folder, tmp_path):
    common = ["classify", str(folder), "--device", "cpu", "--tile-size", "512", "--quiet", "--segmenter", "watershed"]
    assert main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert main([*common, "--out", str(tmp_path / "dask"), "--dask", "local", "--workers", "2"]) == 0
    serial = pd.read_parquet(tmp_path / "serial" / batch.COHORT_NAME)
    dask = pd.read_parquet(tmp_path / "dask" / batch.COHORT_NAME)
    pd.testing.assert_frame_equal(dask, serial)
    assert set(serial["image"]) == {"mosaic", *(p.stem for p in folder.glob("TCGA*"))}
    for stem in serial["image"].unique():
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "dask" / f"{stem}_nuclei.tif"),
            tifffile.imread(tmp_path / "serial" / f"{stem}_nuclei.tif"),
        )
    m = json.loads((tmp_path / "dask" / batch.MANIFEST_NAME).read_text())
    assert m["executor"] == "Dask local cluster, 2 worker(s)" and m["totals"]["done"] == 3
    done = json.loads((tmp_path / "dask" / "mosaic.done.json").read_text())
    assert done["provenance"]["tiled"] and done["provenance"]["n_tiles"] == 2


def test_unreachable_scheduler_is_one_line(tmp_path, capsys):
    with pytest.raises(Exception, match="Cannot reach the Dask scheduler"):
        make_executor("tcp://127.0.0.1:9", None, timeout="2s")

"""The command line's output contract and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import tifffile

from napari_uam.cli import main
from napari_uam.sample_data import SAMPLE_PATH


def test_classify_sample_writes_contract(tmp_path, capsys):
    assert main(["classify", "--sample", "--out", str(tmp_path), "--device", "cpu"]) == 0
    stem = SAMPLE_PATH.name.split(".")[0]
    labels = tifffile.imread(tmp_path / f"{stem}_nuclei.tif")
    assert labels.shape == (465, 465)
    n = len(np.unique(labels)) - 1
    csv = pd.read_csv(tmp_path / f"{stem}_cells.csv")
    assert len(csv) == n
    assert list(csv.columns[:6]) == ["label", "y", "x", "area_um2", "class", "tumor_probability"]
    gj = json.loads((tmp_path / f"{stem}_cells.geojson").read_text())
    assert len(gj["features"]) == n
    assert len(pd.read_parquet(tmp_path / f"{stem}_cells.parquet")) == n
    assert "nuclei" in capsys.readouterr().out
    # A second run skips the finished image and rewrites nothing.
    before = (tmp_path / f"{stem}_cells.csv").read_bytes()
    assert main(["classify", "--sample", "--out", str(tmp_path)]) == 0
    assert "skipped (done" in capsys.readouterr().out
    # Without its done marker the image is not finished, and its outputs are still never
    # overwritten without --overwrite: the image fails with one line, status 1.
    (tmp_path / f"{stem}.done.json").unlink()
    assert main(["classify", "--sample", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Not overwriting" in err[0]
    assert (tmp_path / f"{stem}_cells.csv").read_bytes() == before


def test_bad_input_exits_with_one_line(tmp_path, capsys):
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((64, 64), np.uint8))
    out = tmp_path / "o"
    # An unusable image fails (status 1) with one line; unusable arguments give status 2.
    assert main(["classify", str(gray), "--mpp", "0.5", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grayscale" in err[0]
    rgb = tmp_path / "nompp.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(rgb)
    assert main(["classify", str(rgb), "--out", str(out)]) == 1
    assert "--mpp" in capsys.readouterr().err
    # Only the run manifest is written: no per-image output, no temporary file.
    assert sorted(p.name for p in out.iterdir()) == ["napari_uam_run.json"]
    assert main(["classify", str(tmp_path / "missing.tif"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
    assert main(["classify", str(gray), "--mpp", "0.5", "--formats", "tif,xls", "--out", str(out)]) == 2
    assert "xls" in capsys.readouterr().err

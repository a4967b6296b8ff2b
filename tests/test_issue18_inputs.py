"""Issue 18: inputs the tool accepted and then mishandled, each met the way a user meets it.

NaN classifier weights, a pixel size whose resampled image exhausts memory, the tiled path
switching off Pillow's decompression-bomb guard, spreadsheet formulas in CSV class names,
and misleading image-validation messages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image


# ---------------------------------------------------------------- 3. Pillow's pixel limit
def test_tiled_read_keeps_pillow_pixel_limit(tmp_path):
    from napari_uam.batch import tiles
    from napari_uam.io import region_reader

    path = tmp_path / "patch.png"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(path)
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None  # Pillow's default guard is on in a fresh process
    region_reader._whole.cache_clear()
    assert tiles.probe(path)[:2] == (64, 80)
    region = tiles.RegionReader(str(path)).read(0, 32, 0, 40)  # a PNG is decoded whole
    assert region.shape == (32, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == before


# ---------------------------------------------------------------- 4. CSV formula injection
def test_csv_export_neutralises_formulas(tmp_path):
    from napari_uam.io.export import export_cells

    labels = np.zeros((32, 32), np.int32)
    labels[2:6, 2:6], labels[10:14, 10:14], labels[20:24, 20:24] = 1, 2, 3
    names = ['=HYPERLINK("http://x","click")', "+cmd", "tumor"]
    table = pd.DataFrame(
        {
            "label": [1, 2, 3],
            "y": [3.5, 11.5, 21.5],
            "x": [3.5, 11.5, 21.5],
            "area_um2": [4.0] * 3,
            "class": names,
            "tumor_probability": [0.1, 0.2, 0.9],
            "f_neg": [-1.5, 0.0, 2.0],
            "note": ["@SUM(A1)", "-2+3", "\tx"],
        }
    )
    paths = export_cells(labels, table, tmp_path, "img", formats=("csv", "parquet"))
    csv = pd.read_csv(paths["csv"], dtype={"class": str, "note": str}, keep_default_na=False)
    assert csv["class"].tolist() == ["'" + names[0], "'+cmd", "tumor"]
    assert csv["note"].tolist() == ["'@SUM(A1)", "'-2+3", "'\tx"]
    assert csv["f_neg"].tolist() == [-1.5, 0.0, 2.0]  # numbers are not text: untouched
    # Parquet is typed: the names stay verbatim there, and the caller's table is unchanged.
    assert pd.read_parquet(paths["parquet"])["class"].tolist() == names
    assert table["class"].tolist() == names


# ---------------------------------------------------------------- 1. NaN classifier weights
def test_classify_refuses_nan_checkpoint(tmp_path):
    import subprocess
    import sys

    import torch

    from napari_uam.classify.checkpoint import default_weights_path

    ckpt = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.ndim == 2)
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_uam.cli",
            "classify",
            "--sample",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--model",
            str(bad),
            "--formats",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0, proc.stdout
    assert "NaN or infinite class probabilities" in proc.stderr
    assert not list(out.glob("*_cells.csv"))


# ---------------------------------------------------------------- 5. boolean pixel size
def test_run_refuses_boolean_mpp(tmp_path):
    from napari_uam import pipeline
    from napari_uam.errors import InvalidImageError
    from napari_uam.io.reader import read_image

    path = tmp_path / "patch.png"
    Image.fromarray(np.full((64, 64, 3), 220, np.uint8)).save(path)
    image, _ = read_image(path)
    with pytest.raises(InvalidImageError, match="boolean"):
        pipeline.run(image, True)

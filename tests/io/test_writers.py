"""The writers (io/writers.py): CSV cells a spreadsheet would run as formulas, a full disk."""

from __future__ import annotations

import errno

import numpy as np
import pandas as pd
import pytest

from napari_uam.io import atomic
from napari_uam.io.writers import write_cells_csv, write_cells_parquet, write_geojson, write_labels_tiff

from _faults import _enospc, _labels, _table


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


@pytest.mark.parametrize("writer", ["csv", "parquet", "tif", "geojson"])
def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    lab, table = _labels(), _table(_labels())
    write = {
        "csv": lambda p: write_cells_csv(table, p, overwrite=True),
        "parquet": lambda p: write_cells_parquet(table, p, overwrite=True),
        "tif": lambda p: write_labels_tiff(lab, p, overwrite=True),
        "geojson": lambda p: write_geojson(lab, table, p, overwrite=True),
    }[writer]
    target = tmp_path / f"out.{writer}"
    write(target)
    before = target.read_bytes()
    # A full disk shows at the latest when the data is flushed to it.
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        write(target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left

"""The writers (io/writers.py): CSV cells a spreadsheet would run as formulas, a full disk."""

from __future__ import annotations

import numpy as np
import pandas as pd


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

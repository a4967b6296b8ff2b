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


def _cells_like(n: int = 400, seed: int = 3) -> pd.DataFrame:
    """A cell table as the pipeline writes it, with the floats that are hard to format."""
    rng = np.random.default_rng(seed)
    cols = {
        "label": np.arange(1, n + 1, dtype=np.int64),
        "y": rng.random(n) * 4096,
        "x": rng.random(n) * 4096,
        "area_um2": rng.random(n) * 80,
        "class": rng.choice(["tumor", "non-tumor"], n).astype(object),
        "tumor_probability": rng.random(n),
        "edited": rng.random(n) < 0.5,
        "f32": rng.random(n).astype(np.float32),
    }
    for k in range(20):
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 14)
        v[rng.random(n) < 0.05] = np.nan
        cols[f"feature_{k}"] = v
    cols["edge"] = np.resize([np.inf, -np.inf, -0.0, 0.0, 5e-324, 1e16, 123456789.0, 1 / 3, np.nan, 0.1], n)
    return pd.DataFrame(cols)


def _pandas_csv(table: pd.DataFrame, path) -> bytes:
    table.to_csv(path, index=False, float_format="%.9g")
    return path.read_bytes()


def test_fast_csv_writes_the_bytes_pandas_writes(tmp_path):
    """The column-wise CSV writer (a quarter of a slide run was pandas formatting floats) gives
    pandas' own bytes: NaN empty, inf, -0.0, subnormals, float32, bools, ints, class names."""
    from napari_uam.io.writers import csv_text

    table = _cells_like()
    assert csv_text(table) is not None  # the fast path is taken
    ours = write_cells_csv(table, tmp_path / "ours.csv").read_bytes()
    assert ours == _pandas_csv(table, tmp_path / "pandas.csv")
    # Class names as a categorical or pandas' string dtype: the same text, the same bytes.
    for dtype in ("category", "string"):
        typed = table.assign(**{"class": table["class"].astype(dtype)})
        assert csv_text(typed) is not None
        assert write_cells_csv(typed, tmp_path / f"{dtype}.csv").read_bytes() == ours
    assert csv_text(table.iloc[:0]) == ",".join(table.columns) + "\n"


@pytest.mark.parametrize(
    "change",
    ["comma in a class", "quote in a class", "missing category", "one column", "odd header", "missing text"],
)
def test_tables_the_fast_csv_cannot_write_go_through_pandas(tmp_path, change):
    from napari_uam.io.writers import csv_text

    table = _cells_like(50)
    if change == "comma in a class":
        table.loc[3, "class"] = "tumor, grade 2"
    elif change == "quote in a class":
        table.loc[3, "class"] = 'say "tumor"'
    elif change == "missing category":
        table["class"] = table["class"].astype("category")
        table.loc[3, "class"] = None
    elif change == "one column":
        table = table[["area_um2"]]
    elif change == "odd header":
        table = table.rename(columns={"edge": "edge, in um"})
    else:
        table.loc[3, "class"] = None
    assert csv_text(table) is None
    assert write_cells_csv(table, tmp_path / "ours.csv").read_bytes() == _pandas_csv(table, tmp_path / "p.csv")

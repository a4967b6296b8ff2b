"""The export (io/export.py) failing midway or while renaming leaves the folder as it was."""

from __future__ import annotations

import os

import pytest

from napari_uam.io import export as export_mod
from napari_uam.io import export_cells

from _faults import _enospc, _labels, _table


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-folder", "over-previous"])
def test_export_failing_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch, overwrite):
    lab, table = _labels(), _table(_labels())
    if overwrite:
        export_cells(lab, table, tmp_path, "img")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # The 3rd of the 4 writes (tif, csv, parquet, geojson) hits a full disk.
    monkeypatch.setattr(export_mod, "write_cells_parquet", _enospc)
    with pytest.raises(OSError, match="No space left"):
        export_cells(lab, table.iloc[:1], tmp_path, "img", overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_export_failing_while_renaming_removes_its_new_files(tmp_path, monkeypatch):
    lab, table = _labels(), _table(_labels())
    real, calls = os.replace, []

    def third_fails(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            _enospc()
        real(src, dst)

    monkeypatch.setattr(os, "replace", third_fails)  # every rename, the staged outputs' included
    with pytest.raises(OSError):
        export_cells(lab, table, tmp_path, "img")
    assert list(tmp_path.iterdir()) == []

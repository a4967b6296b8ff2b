"""Outputs do not change under refactoring: the command line, the dock and the tiled path are
compared with digests recorded before the code was reorganised (issue 19: "behaviour unchanged").

Each run's files are reduced to digests: TIFF, CSV and GeoJSON byte for byte; Parquet by its
columns, types and values (its key-value metadata carries timings); the run's ``*.done.json``
with the keys that change run to run (times, absolute paths) left out. A digest that differs
names the file, so a change of behaviour is seen where it happens.

Rewrite the reference only when a change of results is intended and said in the commit:
``NAPARI_UAM_WRITE_REFERENCE=1 python -m pytest tests/test_reference_outputs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

REFERENCE = Path(__file__).resolve().parent / "reference" / "outputs.json"
WRITE = os.environ.get("NAPARI_UAM_WRITE_REFERENCE") == "1"
#: Keys of a run record that differ between two runs of the same code on the same input
#: (``versions``: the installed libraries', e.g. pandas 2 where the export extra asks for it).
VOLATILE = {
    "versions",
    "time_utc",
    "finished_utc",
    "started_utc",
    "timings",
    "image",
    "tumor_model_path",
    "path",
    "argv",
    "cwd",
    "out_dir",
    "segment_s",
    "measure_s",
    "classify_s",
    "tumor_mask_s",
    "seconds",
}
#: Record fields added after the digests were recorded, each an addition and not a change of
#: results (every output file still matches): left out of the records' digests, and checked
#: by their own tests. ``tissue_detection``: the tiled path's tissue area (issue 20,
#: tests/batch/test_tissue.py).
ADDED_SINCE_REFERENCE = {"tissue_detection"}
#: One thread, so that the numbers do not depend on how work is split between cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
MPP = 0.25  # CoNSeP


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in sorted(value.items()) if k not in VOLATILE | ADDED_SINCE_REFERENCE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _digest(path: Path) -> str:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        frame = table.to_pandas()
        payload = str(table.schema.remove_metadata()).encode() + frame.to_csv(index=False).encode()
    elif path.name.endswith(".json"):
        payload = json.dumps(_strip(json.loads(path.read_text())), sort_keys=True).encode()
    else:
        payload = path.read_bytes()
    return hashlib.sha256(payload).hexdigest()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _check(case: str, got: dict[str, str]) -> None:
    ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    if WRITE:
        ref[case] = got
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"reference for {case!r} written to {REFERENCE}")
    assert case in ref, f"no reference for {case!r}: see this module's docstring"
    want = ref[case]
    assert sorted(got) == sorted(want), f"{case}: files {sorted(got)} != reference {sorted(want)}"
    changed = [name for name in want if got[name] != want[name]]
    assert not changed, f"{case}: outputs changed: {changed}"


def _classify(args: list[str], out: Path) -> None:
    cmd = [sys.executable, "-m", "napari_uam.cli", "classify", *args, "--out", str(out), "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stderr


def test_cli_sample_outputs_match_the_reference(tmp_path):
    out = tmp_path / "out"
    _classify(["--sample"], out)
    _check("cli_sample", _digests(out))


@pytest.mark.slow
def test_tiled_mosaic_outputs_match_the_reference(tmp_path, consep_mosaic):
    """A 4096 x 4096 mosaic of 16 real CoNSeP fields through the tiled path (tiles of 1024)."""
    mosaic = np.pad(consep_mosaic(range(1, 17), 1000, per_row=4), ((48, 48), (48, 48), (0, 0)), mode="reflect")
    assert mosaic.shape == (4096, 4096, 3)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(
        folder / "mosaic.tif",
        mosaic,
        tile=(256, 256),
        compression="zlib",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    _classify([str(folder / "mosaic.tif"), "--tile-size", "1024"], out)
    done = json.loads((out / "mosaic.done.json").read_text())
    assert done["provenance"]["tiled"] and done["provenance"]["n_tiles"] == 16
    _check("cli_tiled_mosaic", _digests(out))


def _weights_installed() -> bool:
    from napari_uam.classify.checkpoint import default_weights_path

    return Path(default_weights_path()).is_file()


@pytest.mark.gui
def test_dock_sample_outputs_match_the_reference(make_napari_viewer, qtbot, tmp_path):
    """Open the shipped sample, click Classify cells, then Export: the files as before."""
    from qtpy.QtCore import Qt

    if not _weights_installed():
        pytest.skip("default UAM weights not installed")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-uam", "he_sample")
    _, widget = viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
    for button in (widget.classify_btn, widget.export_btn):
        if button is widget.export_btn:
            widget.export_dir_edit.setText(str(tmp_path))
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    got = _digests(tmp_path)
    assert len(got) == 4, widget.status.text()
    nuclei = viewer.layers[f"{viewer.layers[0].name} nuclei"]
    got["layer:nuclei"] = hashlib.sha256(np.ascontiguousarray(nuclei.data, dtype=np.int32).tobytes()).hexdigest()
    feats = pd.DataFrame(nuclei.features)[["label", "class", "tumor_probability"]]
    got["layer:features"] = hashlib.sha256(feats.to_csv(index=False).encode()).hexdigest()
    _check("dock_sample", got)
    # One stage runner: the dock's files are the command line's, byte for byte.
    cli = json.loads(REFERENCE.read_text())["cli_sample"]
    assert {k: v for k, v in got.items() if k in cli} == {k: cli[k] for k in got if k in cli}

"""Batch command line on real BRCA-M2C patches: equality with the Python API, resumption
after a finished run and after a kill, failures that do not stop the cohort."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_uam import batch, pipeline
from napari_uam.cli import main
from napari_uam.io import read_image

MPP = 0.5  # BRCA-M2C patches are 20x


@pytest.fixture
def three(tmp_path, brca_dir):
    """A folder with the three smallest BRCA-M2C validation patches (real H&E)."""
    src = sorted((brca_dir / "val").glob("*.jpg"), key=lambda p: p.stat().st_size)[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in src:
        shutil.copy(p, folder / p.name)
    return sorted(folder.iterdir())


def _files(out):
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST_NAME}


def _manifest(out):
    return json.loads((out / batch.MANIFEST_NAME).read_text())


def test_folder_equals_python_and_second_run_skips(three, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["classify", str(three[0].parent), "--mpp", str(MPP), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"[1/3] {three[0].name}: ") and "tumor" in lines[0]
    total = 0
    for p in three:
        stem = batch.image_stem(p)
        res = pipeline.run(read_image(p)[0], MPP, device="cpu")
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}_nuclei.tif"), res.labels)
        table = pd.read_parquet(out / f"{stem}_cells.parquet")
        pd.testing.assert_frame_equal(table, res.table, check_dtype=False)
        assert len(pd.read_csv(out / f"{stem}_cells.csv")) == len(res.table)
        done = json.loads((out / f"{stem}.done.json").read_text())
        assert done["model"]["sha256"] == res.provenance["model_sha256"]
        assert done["schema_id"] == res.provenance["schema_id"] and done["n_cells"] == len(res.table)
        total += len(res.table)
    cohort = pd.read_parquet(out / batch.COHORT_NAME)
    assert len(cohort) == total and cohort.columns[0] == "image"
    assert list(cohort["image"].unique()) == [batch.image_stem(p) for p in three]
    m = _manifest(out)
    assert m["totals"]["done"] == 3 and m["totals"]["cells"] == total and m["state"] == "finished"
    assert m["model"]["sha256"] and m["argv"][1:] == argv

    before = _files(out)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("skipped (done") == 3
    assert _files(out) == before  # outputs, markers and cohort table untouched
    assert _manifest(out)["totals"]["skipped"] == 3


def test_killed_run_leaves_complete_sets_and_resumes(three, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["classify", str(three[0].parent), "--mpp", str(MPP), "--out", str(out), "--device", "cpu", "--quiet"]
    real_run = pipeline.run
    calls = []

    def dies_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run", dies_on_second)
    assert main(argv) == 130
    first, second = (batch.image_stem(p) for p in three[:2])
    names = {p.name for p in out.iterdir()}
    assert {
        f"{first}{s}" for s in ("_nuclei.tif", "_cells.csv", "_cells.parquet", "_cells.geojson", ".done.json")
    } <= names
    assert not [n for n in names if n.startswith(second)]
    assert not [n for n in names if n.startswith(".")]  # no staging folder, no temp file
    m = _manifest(out)
    assert m["state"] == "interrupted"
    assert [i["status"] for i in m["images"]] == ["done", "interrupted", "pending"]

    monkeypatch.setattr(pipeline, "run", real_run)
    result = batch.run_batch("classify", [three[0].parent], out, mpp=MPP, device="cpu")
    assert [s.status for s in result.images] == ["skipped", "done", "done"]
    assert result.exit_code == 0
    cohort = pd.read_parquet(result.cohort_path)
    assert len(cohort) == sum(s.n_cells for s in result.images)


def test_corrupt_image_fails_alone_and_labels_are_reused(three, tmp_path, capsys):
    folder = three[0].parent
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--mpp", str(MPP), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg: failed: Could not read" in err[0]
    m = _manifest(out)
    status = {i["stem"]: i for i in m["images"]}
    assert status["broken"]["status"] == "failed" and "Could not read" in status["broken"]["reason"]
    assert m["totals"] == {**m["totals"], "done": 3, "failed": 1}
    assert not (out / batch.COHORT_NAME).exists()  # segment writes no table

    # measure reuses the labels only when asked, and leaves the labels file as it was.
    good = [p for p in three if p.name != "broken.jpg"]
    tifs = {p: (out / f"{batch.image_stem(p)}_nuclei.tif") for p in good}
    mtimes = {p: t.stat().st_mtime_ns for p, t in tifs.items()}
    result = batch.run_batch("measure", [str(p) for p in good], out, mpp=MPP, device="cpu", labels_from_out=True)
    assert result.exit_code == 0 and [s.status for s in result.images] == ["done"] * 3
    for p, tif in tifs.items():
        assert tif.stat().st_mtime_ns == mtimes[p]
        table = pd.read_parquet(out / f"{batch.image_stem(p)}_cells.parquet")
        assert "class" not in table.columns
        assert len(table) == len(np.unique(tifffile.imread(tif))) - 1
    assert len(pd.read_parquet(result.cohort_path)) == sum(s.n_cells for s in result.images)

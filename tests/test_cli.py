"""The command line's output contract and its one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_uam import pipeline
from napari_uam.cli import main
from napari_uam.io import atomic
from napari_uam.sample_data import SAMPLE_PATH, sample_image

import _cli_run
from _cli_run import _env, _err_lines, cli
from _faults import _enospc, _labels, _table

patch = _cli_run.patch  # the fixture: a small real H&E patch as a PNG (shared with tests/batch/)


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


def _consep_table(consep_dir, tmp_path):
    """A real cell table with ground truth: CoNSeP field 1's annotated nuclei, measured;
    ``target`` 1 for epithelial (the tumor proxy, see the data's meta.json), else 0."""
    from PIL import Image

    from napari_uam import pipeline

    img = np.asarray(Image.open(consep_dir / "train_1.jpg").convert("RGB"))
    inst = np.asarray(Image.open(consep_dir / "train_1_inst.png")).astype(np.int32)
    table = pipeline.measure_cells(img, inst, 0.25, device="cpu")
    truth = pd.read_csv(consep_dir / "train_1_cells.csv").set_index("label")["class"]
    table.insert(4, "target", (truth.reindex(table["label"]).to_numpy() == "epithelial").astype(int))
    path = tmp_path / "consep_1.parquet"
    table.to_parquet(path)
    return table, path


def test_evaluate_reports_checkpoint_metrics(tmp_path, capsys, consep_dir):
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    from napari_uam import pipeline

    table, path = _consep_table(consep_dir, tmp_path)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", "default", str(path), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "consep_1.parquet" in printed and "confusion" in printed
    res = json.loads(out.read_text())
    clf = pipeline.get_classifier(None, "cpu")
    proba = clf.predict_proba(table[pipeline.feature_columns(table.drop(columns="target"))])
    y = table["target"].to_numpy()
    m = res["tables"]["consep_1.parquet"]
    assert m["n"] == len(table) > 300
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, proba.argmax(1)))
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba[:, clf.tumor_class]))
    assert m["confusion"] == confusion_matrix(y, proba.argmax(1)).tolist()
    assert m["auc"] > 0.7  # the shipped model separates epithelial nuclei on a real field
    assert res["model"]["sha256"] == clf.sha256 and res["all"]["n"] == len(table)

    # A table measured with other features fails with the schema message, status 2.
    table.drop(columns=[table.columns[-1]]).to_parquet(tmp_path / "other.parquet")
    assert main(["evaluate", str(tmp_path / "other.parquet"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "does not match model" in err and "1 missing" in err
    assert main(["evaluate", str(path), "--target", "truth", "--device", "cpu"]) == 2
    assert "no ground-truth column 'truth'" in capsys.readouterr().err


# --------------------------------------------------------------- what is not H&E tissue (issue 15)
def test_cli_refuses_noise_with_exit_1(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(src)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "classify", str(src), "--mpp", "0.5", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "noise" in proc.stderr + proc.stdout
    assert not list((tmp_path / "out").glob("noise_cells.*"))


# ------------------------------------------------------------------- a full disk (issue 9)
def test_cli_disk_full_exits_with_one_line(tmp_path, monkeypatch, capsys):
    png = tmp_path / "he.png"
    Image.fromarray(np.ascontiguousarray(sample_image()[:160, :160])).save(png)
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pipeline.PipelineResult(_labels(), _table(_labels())))
    monkeypatch.setattr(pipeline, "get_classifier", lambda *a, **k: None)
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    out = tmp_path / "out"
    assert main(["classify", str(png), "--mpp", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert list(out.iterdir()) == []


# ------------------------------------------------ clear errors before any work (issue 18)
@pytest.fixture(scope="module")
def project_master(tmp_path_factory):
    """A real annotation project: the sample segmented, half its nuclei labelled tumor."""
    from napari_uam import pipeline
    from napari_uam.io.project import save_project

    rgb = np.asarray(Image.open(SAMPLE_PATH).convert("RGB"))
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    table = pipeline.cell_geometry(labels, 0.5)
    table["class"] = np.where(table["label"] % 2 == 0, "tumor", "non-tumor")
    return save_project(tmp_path_factory.mktemp("proj") / "good", rgb, labels, table, 0.5)


def _damage(folder: Path, how: str) -> None:
    if how == "manifest_list":
        (folder / "project.json").write_text("[]")
    elif how == "mpp_text":
        meta = json.loads((folder / "project.json").read_text())
        meta["mpp"] = "abc"
        (folder / "project.json").write_text(json.dumps(meta))
    else:
        name = {"image_cut": "image.tif", "table_cut": "cells.parquet"}[how]
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("how", ["manifest_list", "mpp_text", "image_cut", "table_cut"])
def test_train_refuses_a_damaged_project_in_one_line(project_master, tmp_path, how):
    good = shutil.copytree(project_master, tmp_path / "a_good")
    bad = shutil.copytree(project_master, tmp_path / "b_bad")
    _damage(Path(bad), how)
    model = tmp_path / "model.pt"
    proc = cli("train", good, bad, "--out", model, "--epochs", "1", timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("napari-uam: error:") and "b_bad" in lines[0], proc.stderr
    assert "labelled cells" not in proc.stdout  # refused before any feature was measured
    assert not model.exists()


def _bad_checkpoint(tmp_path: Path, how: str) -> Path:
    import torch

    from napari_uam.classify.checkpoint import default_weights_path

    if how == "csv":
        path = tmp_path / "cells.csv"
        path.write_text("label,y,x,area_um2\n1,2.5,3.5,20.0\n")
        return path
    ckpt = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    if how == "config5":
        ckpt["config"] = 5
    elif how == "normalisation":
        ckpt["normalization"]["method"] = "zscore_v7"
    elif how == "tumor_class":
        ckpt["tumor_class"] = 7
    elif how == "no_classes":
        ckpt["class_names"] = []
    elif how == "schema":
        ckpt["schema_id"] = "other-radiomics-v9"
        ckpt["feature_names"] = [f"other_{n}" for n in ckpt["feature_names"]]
    path = tmp_path / f"{how}.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "how, says",
    [
        ("config5", "'config' is 5"),
        ("normalisation", "unknown feature normalisation 'zscore_v7'"),
        ("tumor_class", "'tumor_class' 7 is not the index"),
        ("no_classes", "'class_names' is []"),
        ("schema", "trained on feature schema 'other-radiomics-v9'"),
        ("csv", "it is a CSV / text table"),
    ],
)
def test_bad_checkpoint_is_refused_before_any_image(patch, tmp_path, how, says):
    from napari_uam.classify.checkpoint import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("default UAM weights not installed")
    model = _bad_checkpoint(tmp_path, how)
    out = tmp_path / "out"
    proc = cli("classify", patch, "--mpp", "0.5", "--out", out, "--device", "cpu", "--model", model, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("napari-uam: error:") and says in lines[0], proc.stderr
    assert "Weights only load failed" not in proc.stderr
    assert not out.exists()  # before any image was read, segmented or measured


def test_damaged_segmentation_weights_are_reported(patch, tmp_path):
    bad = tmp_path / "nuclei_unet.pt"
    bad.write_bytes(b"\x80\x02 not really a pickle")
    out = tmp_path / "out"
    env = {**_env(), "NAPARI_UAM_SEG_WEIGHTS": str(bad)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_uam.cli",
            "segment",
            str(patch),
            "--mpp",
            "0.5",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in _err_lines(proc) if "segmenter is not available" in ln]
    assert len(warn) == 1 and warn[0].startswith("napari-uam: warning:") and str(bad) in warn[0], proc.stderr
    assert len(_err_lines(proc)) == 1  # one line, not a multi-line dump with a source line
    done = json.loads((out / "patch.done.json").read_text())
    assert done["provenance"]["segment_backend"] == "watershed"

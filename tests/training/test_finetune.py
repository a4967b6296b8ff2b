"""Fine-tuning from annotated projects: one function for the dock and ``napari-uam train``.

Projects are built from real BRCA-M2C patches (watershed nuclei, classes from the dataset's
own point annotations, as an annotator with a points layer would), saved with
:func:`save_project`, and trained on through :func:`cells_from_projects`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_uam.errors import CancelledError, CheckpointError
from napari_uam.training.finetune import (
    FinetuneConfig,
    NotEnoughCellsError,
    cells_from_projects,
    finetune,
    save_finetuned,
)

REPO = Path(__file__).resolve().parents[2]


def annotated_project(image_path: Path, folder: Path):
    """Segment a real BRCA-M2C patch, label its nuclei from the dataset's points, save a project."""
    from PIL import Image

    from napari_uam import annotation as A
    from napari_uam import pipeline
    from napari_uam.io.project import save_project

    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    table = pipeline.cell_geometry(labels, 0.5)
    pts = pd.read_csv(str(image_path)[: -len(".jpg")] + "_points.csv")
    classes = A.classes_from_points(labels, pts[["y", "x"]].to_numpy(), pts["class"], mpp=0.5)
    table, _ = A.apply_classes(table, classes, "points")
    return save_project(folder, rgb, labels, table, 0.5, name=image_path.stem[:23])


@pytest.fixture(scope="module")
def projects(brca_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("projects")
    images = sorted((brca_dir / "train").glob("*.jpg"))[:3]
    for i, img in enumerate(images):
        annotated_project(img, root / f"p{i}")
    return root


@pytest.fixture(scope="module")
def cells(projects):
    return cells_from_projects([projects])


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cells_come_from_every_project_with_measured_features(cells, projects):
    from napari_uam.radiomics import DEFAULT_SCHEMA

    assert cells["image"].nunique() == 3
    assert set(cells["target"].unique()) == {0, 1}
    assert (cells["target"] == (cells["class"] == "tumor")).all()
    feats = cells[list(DEFAULT_SCHEMA.feature_names)]
    assert feats.notna().to_numpy().mean() > 0.99  # measured again, not NaN placeholders
    assert len(cells) > 100


def test_same_seed_gives_identical_weights_in_cli_and_function(cells, projects, tmp_path):
    from napari_uam.classify.checkpoint import default_weights_path, read_checkpoint

    # No validation share: the last epoch is kept, so the weights really are trained ones.
    cfg = FinetuneConfig(init="default", epochs=2, seed=3, val_fraction=0.0)
    first = finetune(cells, cfg)
    assert not _same(_state(first.model), read_checkpoint(default_weights_path())["state_dict"])
    again = finetune(cells.sample(frac=1.0, random_state=1), cfg)  # row order must not matter
    assert _same(_state(first.model), _state(again.model))
    assert [r["loss"] for r in first.history] == [r["loss"] for r in again.history]
    other = finetune(cells, FinetuneConfig(init="default", epochs=2, seed=4, val_fraction=0.0))
    assert not _same(_state(first.model), _state(other.model))

    out = tmp_path / "cli.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "train", str(projects), "--out", str(out), "--epochs", "2",
         "--seed", "3", "--val-fraction", "0", "--init", "default"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "kept epoch" in proc.stdout and out.is_file() and out.with_suffix(".md").is_file()
    assert "Calibration: T = 1 (not fitted: no validation cells" in proc.stdout, proc.stdout
    ckpt = read_checkpoint(out)
    assert _same(ckpt["state_dict"], _state(first.model)), "CLI and function differ for the same seed"
    assert ckpt["training"]["finetune"] and ckpt["training"]["init"]["kind"] == "default"
    assert ckpt["training"]["val"]["images"] == 0 and ckpt["training"]["train"]["images"] == 3

    # The CLI never overwrites without --overwrite (exit 2, file untouched).
    before = out.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "napari_uam.cli", "train", str(projects), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert out.read_bytes() == before


def test_finetuned_checkpoint_classifies_and_keeps_the_start_normaliser(cells, tmp_path):
    from napari_uam.classify.checkpoint import default_weights_path, load_classifier, read_checkpoint

    res = finetune(cells, FinetuneConfig(init="default", epochs=3, seed=0, val_fraction=0.34))
    assert res.history[0]["epoch"] == 0 and np.isfinite(res.history[0]["val_accuracy"])
    # Early stopping keeps the best validation AUC among the fine-tuned epochs.
    assert res.best_epoch >= 1
    assert res.val_metrics["auc"] == max(r["val_auc"] for r in res.history if r["epoch"] >= 1)
    path, card = save_finetuned(res, tmp_path / "m.pt")
    start = read_checkpoint(default_weights_path())
    ck = read_checkpoint(path)
    assert ck["normalization"] == start["normalization"] and ck["arch"] == start["arch"]
    assert ck["model_id"] == "m" and "fine-tuned from `" in card.read_text()
    clf = load_classifier(path, device="cpu")
    from napari_uam.radiomics import DEFAULT_SCHEMA

    proba = clf.predict_proba(cells[list(DEFAULT_SCHEMA.feature_names)])
    assert proba.shape == (len(cells), 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    # A second save to the same name refuses; the shipped weights folder is refused always.
    with pytest.raises(FileExistsError):
        save_finetuned(res, path)
    with pytest.raises(CheckpointError, match="never overwritten"):
        save_finetuned(res, default_weights_path().with_name("mine.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.md", "m.pt"]  # no temporary files


def test_scratch_training_uses_the_chosen_architecture(cells):
    res = finetune(cells, FinetuneConfig(init="scratch", arch="trans", epochs=1, lr=1e-3, val_fraction=0.34))
    assert res.model.name == "trans" and res.init["kind"] == "scratch" and not res.start_metrics
    assert [r["epoch"] for r in res.history] == [1]


def test_cancel_stops_and_bad_inputs_are_explained(cells):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CancelledError, match="nothing was saved"):
        finetune(cells, FinetuneConfig(epochs=50), cancel=cancel)
    with pytest.raises(NotEnoughCellsError, match="other class"):
        finetune(cells[cells["target"] == 1], FinetuneConfig(epochs=1))
    with pytest.raises(NotEnoughCellsError, match="No labelled cells"):
        finetune(cells.iloc[:0], FinetuneConfig(epochs=1))
    with pytest.raises(CheckpointError, match="does not exist"):
        finetune(cells, FinetuneConfig(init="/nonexistent/model.pt", epochs=1))


# ------------------------------------------------------------- calibration (issue 16)
def _val_cells(cells, ckpt):
    return cells[cells["image"].isin(ckpt["training"]["val"]["image_names"])]


def test_finetuned_checkpoint_is_calibrated_on_its_validation_cells(cells, tmp_path):
    """T is fitted on the held-out image's cells, stored with its record, and applied at inference."""
    from napari_uam.training.calibration import T_BOUNDS, model_logits, nll, softmax
    from napari_uam.classify.checkpoint import build_from_checkpoint, load_classifier, read_checkpoint
    from napari_uam.classify.normalize import Normalizer

    res = finetune(cells, FinetuneConfig(init="default", epochs=3, seed=0, val_fraction=0.34))
    path, card = save_finetuned(res, tmp_path / "cal.pt")
    ck = read_checkpoint(path)
    cal = ck["calibration"]
    t = cal["temperature"]
    assert cal["fitted"] and cal["reason"] is None and T_BOUNDS[0] <= t <= T_BOUNDS[1] and t != 1.0
    val = _val_cells(cells, ck)
    assert cal["n_cells"] == len(val) >= 100 and min(cal["cells_per_class"].values()) >= 10
    assert cal["cells_per_class"]["tumor"] == int(val["target"].sum())

    # The saved model's probabilities are softmax(logits / T) of its own logits.
    names = list(ck["feature_names"])
    x = Normalizer.from_dict(ck["normalization"]).transform(val[names].to_numpy(np.float64))
    logits = model_logits(build_from_checkpoint(ck), x)
    clf = load_classifier(path, device="cpu")
    assert clf.temperature == t
    proba = clf.predict_proba(val[names])
    assert np.allclose(proba, softmax(logits, t), atol=1e-6)
    assert np.abs(proba - softmax(logits, 1.0)).max() > 1e-4  # T really changes the numbers

    # The record reproduces from the file, and T is the NLL minimum (never worse than T = 1).
    y = np.where(val["target"].to_numpy() == 1, ck["tumor_class"], 1 - ck["tumor_class"])
    assert nll(logits, y, 1.0) == pytest.approx(cal["nll_before"], abs=1e-5)
    assert nll(logits, y, t) == pytest.approx(cal["nll_after"], abs=1e-5)
    assert cal["nll_after"] <= cal["nll_before"]
    for other in (max(T_BOUNDS[0], t * 0.9), min(T_BOUNDS[1], t * 1.1)):
        assert nll(logits, y, t) <= nll(logits, y, other) + 1e-9
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    text = card.read_text()
    assert f"T = {t:.4f}" in text and "NLL before" in text and f"{cal['ece_after']:.4f}" in text


def test_tiny_validation_set_keeps_temperature_one_with_the_reason(cells, tmp_path):
    from napari_uam.classify.checkpoint import load_classifier

    few = cells.groupby("image", group_keys=False).head(40)  # 40 cells per image: 40 validate
    res = finetune(few, FinetuneConfig(init="default", epochs=1, seed=0, val_fraction=0.34))
    cal = res.calibration
    assert cal["temperature"] == 1.0 and not cal["fitted"]
    assert cal["n_cells"] == 40 and "only 40 validation cells" in cal["reason"] and "100" in cal["reason"]
    path, card = save_finetuned(res, tmp_path / "few.pt")
    assert load_classifier(path, device="cpu").temperature == 1.0
    assert "**T = 1** (not fitted: only 40 validation cells" in card.read_text()

    # Enough cells but only 5 of one class in validation: T = 1 too, and the reason says which.
    val_image = res.summary["val"]["image_names"][0]
    in_val = cells["image"] == val_image
    minority = int(cells.loc[in_val, "target"].mean() < 0.5)  # 1: tumor is the rarer class there
    rare = in_val & (cells["target"] == minority)
    lopsided = pd.concat([cells[~rare], cells[rare].head(5)])
    res2 = finetune(lopsided, FinetuneConfig(init="default", epochs=1, seed=0, val_fraction=0.34))
    cal2 = res2.calibration
    assert res2.summary["val"]["image_names"] == [val_image] and cal2["n_cells"] >= 100
    name = "tumor" if minority else "non-tumor"
    assert cal2["temperature"] == 1.0 and not cal2["fitted"] and f"5 {name}" in cal2["reason"], cal2["reason"]


def test_cli_prints_the_temperature(cells, tmp_path):
    from napari_uam.classify.checkpoint import read_checkpoint

    table = tmp_path / "cells.parquet"
    cells.to_parquet(table)
    out = tmp_path / "cli_cal.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "train", str(table), "--out", str(out), "--epochs", "1",
         "--seed", "0", "--val-fraction", "0.34"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    t = read_checkpoint(out)["calibration"]["temperature"]
    assert f"Calibration: T = {t:.3f} fitted on" in proc.stdout, proc.stdout
    assert "Trust model: uam_default's statistics + 3 fine-tuning image(s) as anchors" in proc.stdout

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

REPO = Path(__file__).resolve().parents[1]


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
    from napari_uam.training.checkpoint import default_weights_path, read_checkpoint

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
    from napari_uam.training.checkpoint import default_weights_path, load_classifier, read_checkpoint

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

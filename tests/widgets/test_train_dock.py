"""The Train dock (widgets/train.py), driven as an annotator would (issue 18): closing napari
mid-training (a real subprocess), which cells validate, and which results layers it offers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _docks import RUN_TIMEOUT_MS, _click, _closed_in, _dock, _run_script


@pytest.mark.gui
def test_closing_napari_during_training_writes_no_checkpoint(brca_dir, tmp_path):
    """viewer.close() mid-training: the run stops, exit 0, and no checkpoint appears later."""
    from napari_uam.classify.checkpoint import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("default UAM weights not installed")
    image = sorted((brca_dir / "val").glob("*.jpg"))[0]
    out = tmp_path / "models" / "closed.pt"
    proc, _ = _run_script("train", image, str(image)[:-4] + "_points.csv", out)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert _closed_in(proc) < 8.0
    # The script waited for every worker thread before exiting: nothing was written after.
    assert not out.exists() and not out.with_suffix(".md").exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_validation_split_by_cells_with_one_or_two_images_and_by_image_beyond():
    import pandas as pd

    from napari_uam.widgets.train import validation_groups

    rng = np.random.default_rng(1)

    def cells(images, n=100):
        return pd.DataFrame({"image": np.repeat(images, n), "label": np.tile(np.arange(1, n + 1), len(images)),
                             "target": rng.integers(0, 2, n * len(images))})  # fmt: skip

    one, text = validation_groups(cells(["a"]), 0.2, seed=0)
    assert one["image"].nunique() == 5 and all(g.startswith("a (cells ") for g in one["image"].unique())
    assert text.startswith("Validating on 20 of 100 cells (a (cells ") and "optimistic" in text
    two, text = validation_groups(cells(["a", "b"]), 0.5, seed=0)
    assert two["image"].nunique() == 4 and "of 200 cells" in text
    many, text = validation_groups(cells(["a", "b", "c", "d", "e"]), 0.2, seed=0)
    assert sorted(many["image"].unique()) == ["a", "b", "c", "d", "e"]  # whole images, as before
    assert text.startswith("Validating on the images ") and "(100 cells)" in text
    assert validation_groups(cells(["a"]), 0.0)[1].startswith("No validation")


def _sources(train):
    return [train.sources.item(i).text() for i in range(train.sources.count())]


@pytest.mark.gui
def test_train_dock_offers_current_results_and_says_which_is_current(make_napari_viewer, qtbot, brca_dir, monkeypatch):
    """Classify, edit, classify again keeping the edited layer ("No"), three times: the Train
    dock lists each image's current results layer, marked "(current)", and an older results
    layer only when the user corrected classes in it; an older one that was only painted is
    stale and not offered (it was listed, unmarked, beside the current one)."""
    from qtpy.QtWidgets import QMessageBox

    from napari_uam.classify.checkpoint import default_weights_path
    from napari_uam.widgets import _layers as L
    from test_annotate import centre_of, click

    if not default_weights_path().is_file():
        pytest.skip("default UAM weights not installed")
    viewer = make_napari_viewer(show=True)
    path = sorted((brca_dir / "val").glob("*.jpg"))[0]
    viewer.add_image(np.asarray(Image.open(path).convert("RGB")), name="he", rgb=True, metadata={"mpp": 0.5})
    classifier = _dock(viewer)
    classifier.region_combo.setCurrentText("Off")
    train = _dock(viewer, "UAM train classifier")
    annotate = _dock(viewer, "UAM annotate cells")
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)

    def classify():
        _click(qtbot, classifier.classify_btn)
        qtbot.waitUntil(lambda: not classifier.busy, timeout=RUN_TIMEOUT_MS)
        assert "classified" in classifier.status.text(), classifier.status.text()
        qtbot.wait(50)  # the Train dock refreshes in the next turn of the event loop

    classify()
    assert _sources(train) == ["layer: he nuclei (current)"]
    first = viewer.layers["he nuclei"]
    # The user erases a nucleus with the fill tool (an edit, but no class correction).
    lab = int(first.features["label"].iloc[0])
    first.fill(tuple(int(v) for v in centre_of(first, lab)), 0)
    assert L.is_edited(first)
    classify()  # "No": keep the edited layer, add the new results beside it
    assert len(asked) == 1 and [x.name for x in viewer.layers if L.owner_record(x) and L.owner_record(x)["kind"] == "nuclei"] == [
        "he nuclei", "he nuclei [1]"]  # fmt: skip
    assert _sources(train) == ["layer: he nuclei [1] (current)"], _sources(train)
    assert "'he nuclei'" in train.sources_note.text() and train.sources_note.isVisibleTo(train)

    # The user corrects classes in the current layer (annotation mode, real clicks).
    second = viewer.layers["he nuclei [1]"]
    annotate.layer_combo.setCurrentText(second.name)
    annotate.set_mode(True)
    feats = second.features
    annotate.class_buttons["non-tumor"].setChecked(True)
    for lab in feats.loc[feats["class"] != "non-tumor", "label"].tolist()[:3]:
        click(second, centre_of(second, lab))
    annotate.set_mode(False)
    assert (second.features["annotation"] == "user").sum() >= 1
    qtbot.wait(50)
    assert _sources(train) == ["layer: he nuclei [1] (current)"]
    classify()
    assert len(asked) == 2
    assert _sources(train) == ["layer: he nuclei [1] (older results, with your corrections)",
                               "layer: he nuclei [2] (current)"], _sources(train)  # fmt: skip
    assert train.sources.item(1).toolTip().startswith("The current results of 'he'")
    assert classifier.current_label.text().startswith("Current results: 'he nuclei [2]'")

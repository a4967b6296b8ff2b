"""The UAM dock, driven as a user would: real napari viewer, real buttons, real pipeline.

The first tests check the widget's layer bookkeeping headless (no Qt); the ``gui`` tests
open images in a napari viewer under Xvfb (pytest-xvfb), click the dock's buttons with
``qtbot.mouseClick``, wait for the worker and check the layers, the ``features`` table, the
tumor colour, layer replacement rules, exports, bad input, Cancel and responsiveness.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_uam.widgets import _layers as L

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot_classify.png"
#: Worker runs of a patch take a few seconds on 2 cores; this bounds a hung run.
RUN_TIMEOUT_MS = 120_000


# --------------------------------------------------------------------------- headless
def _labels_layer(data, name="img nuclei"):
    from napari.layers import Labels

    return Labels(np.asarray(data, dtype=np.int32), name=name)


def _table(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return pd.DataFrame({"label": ids, "y": ids * 1.0, "x": ids * 2.0, "area_um2": ids * 3.0})


def test_checksum_notices_a_painted_pixel():
    data = np.zeros((6, 6), np.int32)
    data[1:3, 1:3] = 1
    before = L.data_checksum(data)
    assert L.data_checksum(data.copy()) == before
    data[5, 5] = 2
    assert L.data_checksum(data) != before
    assert L.data_checksum(data.astype(np.int64)) != L.data_checksum(data)


def test_plan_replaces_own_unedited_layer_only():
    own = _labels_layer(np.eye(4))
    own.features = L.to_features(_table([1]))
    L.stamp(own, "img", L.KIND_NUCLEI)
    plan = L.plan_output([own], "img", L.KIND_NUCLEI)
    assert plan.layer is own and plan.name == "img nuclei" and plan.note == ""

    own.data[0, 1] = 7  # the user paints
    assert L.is_edited(own)
    plan = L.plan_output([own], "img", L.KIND_NUCLEI)
    assert plan.layer is None and plan.name == "img nuclei [1]"
    assert "edited" in plan.note and "img nuclei [1]" in plan.note

    user = _labels_layer(np.eye(4))  # same name, made by the user: no record
    plan = L.plan_output([user], "img", L.KIND_NUCLEI)
    assert plan.layer is None and plan.name == "img nuclei [1]" and "your layer" in plan.note
    # Another image's results are never a target.
    assert L.plan_output([own], "other", L.KIND_NUCLEI).name == "other nuclei"


def test_plan_prefers_the_newest_unedited_own_layer():
    edited = _labels_layer(np.eye(4))
    L.stamp(edited, "img", L.KIND_NUCLEI)
    edited.data[0, 1] = 5
    newer = _labels_layer(np.eye(4), name="img nuclei [1]")
    L.stamp(newer, "img", L.KIND_NUCLEI)
    plan = L.plan_output([edited, newer], "img", L.KIND_NUCLEI)
    assert plan.layer is newer
    assert L.current_layer([edited, newer], "img", L.KIND_NUCLEI) is newer


def test_feature_edits_count_as_edits():
    layer = _labels_layer(np.eye(4))
    table = _table([1]).assign(**{"class": ["tumor"]})
    layer.features = L.to_features(table)
    L.stamp(layer, "img", L.KIND_NUCLEI)
    assert not L.is_edited(layer)
    feats = layer.features.copy()
    feats.loc[0, "class"] = "non-tumor"  # an annotator corrects a class
    layer.features = feats
    assert L.is_edited(layer)


def test_features_round_trip_with_index_column():
    table = _table([3, 7, 9])
    table.attrs["schema_id"] = "s1"
    feats = L.to_features(table)
    assert list(feats.columns[:2]) == ["index", "label"]
    assert feats["index"].tolist() == [3, 7, 9]
    back = L.from_features(feats, {"schema_id": "s1"})
    pd.testing.assert_frame_equal(back, table)
    assert back.attrs["schema_id"] == "s1"


def test_tumor_colormap_is_one_green_on_transparent():
    cmap = L.tumor_colormap()
    rgba = cmap.map(np.array([0, 1, 17, 4096]))
    np.testing.assert_allclose(rgba[0, 3], 0.0)
    for row in rgba[1:]:
        np.testing.assert_allclose(row, L.TUMOR_GREEN)


def test_helpers_for_inputs_and_status():
    assert L.mpp_from_metadata({"mpp": 0.25}) == (0.25, True)
    assert L.mpp_from_metadata({}) == (L.DEFAULT_MPP, False)
    assert L.mpp_from_metadata({"mpp": "nan"}) == (L.DEFAULT_MPP, False)
    assert L.mpp_from_metadata({"mpp": 1000}) == (L.DEFAULT_MPP, False)
    assert L.export_stem("H&E sample (x)", {"source": "/data/slide 1.ome.tif"}) == "slide_1"
    assert L.export_stem("H&E sample (BRCA, A8)") == "H_E_sample_BRCA_A8"
    assert L.export_stem("///") == "image"
    text = L.status_text(
        ran=["segment", "measure", "classify"],
        n_cells=12,
        seconds=3.21,
        backend="watershed",
        model_id="uam-v1",
        n_tumor=5,
    )
    assert text == "Segmented (watershed), measured, classified (uam-v1): 12 cells, 5 tumor in 3.2 s."


def test_describe_layer_explains_non_rgb_layers():
    from napari.layers import Image, Points

    assert L.describe_layer(Image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="he")) == ""
    assert "single-channel" in L.describe_layer(Image(np.zeros((8, 8), np.uint8), name="g"))
    assert "Points layer, not an image" in L.describe_layer(Points(np.zeros((1, 2)), name="p"))


# ------------------------------------------------------------------------------- GUI
def _weights_installed() -> bool:
    from napari_uam.classify.checkpoint import default_weights_path

    return Path(default_weights_path()).is_file()


def _dock(viewer):
    """Dock the widget the way a user does (Plugins menu), through the npe2 manifest."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
    return widget


def _click(qtbot, button):
    from qtpy.QtCore import Qt

    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _run(qtbot, widget, button, timeout=RUN_TIMEOUT_MS):
    """Click a run button and wait until its worker has finished."""
    _click(qtbot, button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _crop(image, size=160):
    return np.ascontiguousarray(image[:size, :size])


@pytest.fixture
def sample_rgb():
    from napari_uam.sample_data import sample_image

    return sample_image()


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    yield viewer, widget
    # Never leave a worker running into the next test's viewer.
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)


def _assert_features_match(layer):
    feats = layer.features
    ids = np.unique(np.asarray(layer.data))
    ids = ids[ids > 0]
    assert len(feats) == ids.size, "one features row per label"
    assert feats["index"].tolist() == feats["label"].tolist()
    assert sorted(feats["label"].tolist()) == ids.tolist()
    shown = [c for c in ("label", "y", "x", "area_um2", "class", "tumor_probability") if c in feats]
    assert not feats[shown].isna().any().any(), "NaN in a displayed column"


@pytest.mark.gui
def test_classify_sample_end_to_end(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Open the shipped sample, click Classify cells, check layers, colour, exports, re-runs."""
    if not _weights_installed():
        pytest.skip("default UAM weights not installed (the missing-weights path is tested below)")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-uam", "he_sample")
    image = viewer.layers[0]
    widget = _dock(viewer)
    assert widget.image_combo.currentText() == image.name
    assert widget.mpp_spin.value() == pytest.approx(0.5)  # from the layer's metadata
    assert widget.mpp_hint.text() == "(from the image)"

    _run(qtbot, widget, widget.classify_btn)
    status = widget.status.text()
    nuclei = viewer.layers[f"{image.name} nuclei"]
    tumor = viewer.layers[f"{image.name} tumor cells"]
    assert status.startswith("Segmented ("), status
    assert "classified (" in status and " s." in status
    n = len(nuclei.features)
    assert n > 50 and f"{n} cells" in status
    _assert_features_match(nuclei)
    assert {"class", "tumor_probability", "area_um2"} <= set(nuclei.features.columns)
    feats = nuclei.features
    assert not feats.isna().any().any(), "NaN in the features napari shows on hover"
    rec = L.owner_record(nuclei)
    assert rec["source"] == image.name and rec["kind"] == L.KIND_NUCLEI and rec["model_id"] in status

    # Tumor layer: exactly the tumor-classified nuclei, all painted the one green.
    tumor_name = rec["tumor_class"]
    want = set(feats.loc[feats["class"] == tumor_name, "label"].tolist())
    got = set(np.unique(tumor.data).tolist()) - {0}
    assert got == want and len(want) > 0
    rgba = tumor.colormap.map(np.array([0] + sorted(want)[:5]))
    assert rgba[0, 3] == 0.0
    np.testing.assert_allclose(rgba[1:], np.tile(L.TUMOR_GREEN, (len(rgba) - 1, 1)))
    assert len(tumor.features) == n

    # Hovering a nucleus shows its row (napari looks labels up in the `index` column).
    lab = int(feats["label"].iloc[0])
    yx = np.argwhere(nuclei.data == lab)[0]
    hover = nuclei._get_properties(tuple(yx), world=False)
    assert f"label: {lab}" in hover and any(h.startswith("class: ") for h in hover)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    viewer.layers.selection.active = image
    qtbot.wait(200)
    shot = viewer.screenshot(path=str(SCREENSHOT), canvas_only=False)
    assert shot.shape[0] > 400 and shot.shape[1] > 800

    # Export all four formats; counts match the labels.
    widget.export_dir_edit.setText(str(tmp_path))
    _run(qtbot, widget, widget.export_btn)
    files = {p.name: p for p in tmp_path.iterdir()}
    assert len(files) == 4, widget.status.text()
    csv = pd.read_csv(next(p for n_, p in files.items() if n_.endswith("_cells.csv")))
    assert len(csv) == n and {"label", "class", "tumor_probability"} <= set(csv.columns)
    geo = json.loads(next(p for n_, p in files.items() if n_.endswith(".geojson")).read_text())
    assert len(geo["features"]) == n
    assert {f["properties"]["classification"]["name"] for f in geo["features"]} <= set(feats["class"])
    import tifffile

    np.testing.assert_array_equal(
        tifffile.imread(next(p for n_, p in files.items() if n_.endswith(".tif"))), nuclei.data
    )

    # Exporting again asks first; "No" keeps every file untouched, "Yes" overwrites.
    from qtpy.QtWidgets import QMessageBox

    stamps = {p: p.stat().st_mtime_ns for p in files.values()}
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    _run(qtbot, widget, widget.export_btn)
    assert asked and "kept" in widget.status.text()
    assert {p: p.stat().st_mtime_ns for p in files.values()} == stamps
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    _run(qtbot, widget, widget.export_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    assert widget.status.text().startswith("Exported to")
    assert len(list(tmp_path.iterdir())) == 4  # no temporary files left behind

    # The scverse / OME outputs are two more boxes (off by default); each reads back with its
    # ecosystem's reader.
    if importlib.util.find_spec("anndata") and importlib.util.find_spec("ome_zarr"):
        from qtpy.QtCore import Qt

        import anndata

        from _ecosystem import read_ome_zarr_labels

        assert not widget.export_checks["h5ad"].isChecked() and not widget.export_checks["zarr"].isChecked()
        for fmt in ("h5ad", "zarr"):
            qtbot.mouseClick(widget.export_checks[fmt], Qt.MouseButton.LeftButton)
        more = tmp_path / "more"
        widget.export_dir_edit.setText(str(more))
        _run(qtbot, widget, widget.export_btn)
        qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
        assert widget.status.text().startswith("Exported to"), widget.status.text()
        adata = anndata.read_h5ad(next(more.glob("*_cells.h5ad")))
        assert adata.n_obs == n and set(adata.obs["class"].astype(str)) <= set(feats["class"])
        levels, _ = read_ome_zarr_labels(next(more.glob("*_nuclei.ome.zarr")))
        np.testing.assert_array_equal(levels[0], nuclei.data)

    # Re-running replaces the plugin's own layers in place: same objects, no new layers.
    names = [layer.name for layer in viewer.layers]
    _run(qtbot, widget, widget.classify_btn)
    assert [layer.name for layer in viewer.layers] == names
    assert viewer.layers[f"{image.name} nuclei"] is nuclei
    assert widget.status.text().startswith("Classified ("), widget.status.text()  # nothing else was missing

    # The user corrects the nuclei: the edited layer is kept unless the user agrees to replace it
    # (test_classifier_dock.py checks "Yes"); "No" keeps it and the results go to a new layer.
    nuclei.paint(tuple(yx), 0, refresh=True)
    edited = np.array(nuclei.data)
    asked.clear()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    _run(qtbot, widget, widget.segment_btn)
    assert asked and f"'{image.name} nuclei' holds your edits" in asked[0][2]
    np.testing.assert_array_equal(nuclei.data, edited)
    new = viewer.layers[f"{image.name} nuclei [1]"]
    assert L.owner_record(new)["kind"] == L.KIND_NUCLEI
    assert f"'{image.name} nuclei' was kept because you edited it" in widget.status.text()
    # Segmenting again leaves no stale tumor layer of the old nuclei behind.
    assert f"{image.name} tumor cells" not in viewer.layers


@pytest.mark.gui
def test_dock_prepares_the_gpu_in_the_background(make_napari_viewer, qtbot, monkeypatch):
    """On a GPU machine the dock starts pipeline.warm_up('cuda') in a worker when it opens
    and says when the GPU is ready; on a CPU-only machine it starts nothing."""
    from napari_uam import pipeline
    from napari_uam.widgets import classifier as device  # the dock asks its resolve_device

    calls = []
    monkeypatch.setattr(
        pipeline, "warm_up", lambda dev: calls.append(dev) or {"device": dev, "seconds": 3.2, "cells": 1}
    )
    monkeypatch.setattr(device, "resolve_device", lambda d="auto": "cpu")
    cpu_dock = _dock(make_napari_viewer())
    assert cpu_dock._warm_worker is None and calls == []
    monkeypatch.setattr(device, "resolve_device", lambda d="auto": "cuda")
    widget = _dock(make_napari_viewer())
    assert "Preparing the GPU" in widget.status.text()
    qtbot.waitUntil(lambda: widget._warm_worker is None, timeout=RUN_TIMEOUT_MS)
    assert calls == ["cuda"]
    assert widget.status.text() == "GPU ready (3 s to prepare)."


@pytest.mark.gui
def test_classify_without_default_weights_says_so(viewer_widget, qtbot, monkeypatch, sample_rgb, tmp_path):
    """No weights installed: a clear message, no invented predictions, no layers."""
    import napari_uam.classify.checkpoint as ckpt

    viewer, widget = viewer_widget
    monkeypatch.setattr(ckpt, "default_weights_path", lambda *a, **k: tmp_path / "missing_uam_default.pt")
    from napari_uam.classify.cache import weights_cache

    weights_cache.clear()
    viewer.add_image(_crop(sample_rgb), name="he", rgb=True, metadata={"mpp": 0.5})
    _run(qtbot, widget, widget.classify_btn)
    text = widget.status.text()
    assert "weights are not installed" in text and "choose a checkpoint file" in text, text
    assert [layer.name for layer in viewer.layers] == ["he"]

    # A checkpoint file instead: none chosen, then a damaged one; each says what is wrong.
    widget.model_combo.setCurrentText("Checkpoint file...")
    assert widget.checkpoint_edit.isEnabled()
    _click(qtbot, widget.classify_btn)
    assert "Choose a checkpoint file" in widget.status.text() and not widget.busy
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(b"not a checkpoint")
    widget.checkpoint_edit.setText(str(bad))
    _run(qtbot, widget, widget.classify_btn)
    assert "damaged.pt" in widget.status.text(), widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["he"]


@pytest.mark.gui
def test_bad_inputs_give_a_clear_message(viewer_widget, qtbot, sample_rgb):
    """Grayscale, RGBA, 16-bit, float, 1-pixel, empty, no nuclei, non-image layer: message, no crash.

    (A 0x0 array cannot even become a napari image layer; napari refuses it itself.)
    """
    viewer, widget = viewer_widget
    crop = _crop(sample_rgb, 128)

    def segment(data, **kwargs):
        kwargs.setdefault("rgb", data.ndim == 3 and data.shape[-1] in (3, 4))
        layer = viewer.add_image(data, name="probe", **kwargs)
        viewer.layers.selection.active = layer
        before = len(viewer.layers)
        if widget.image_combo.currentText() == "probe":
            _run(qtbot, widget, widget.segment_btn)
        else:
            _click(qtbot, widget.segment_btn)
        text = widget.status.text()
        added = len(viewer.layers) - before
        for extra in [layer_ for layer_ in viewer.layers if L.owner_record(layer_)]:
            viewer.layers.remove(extra)
        viewer.layers.remove(layer)
        return text, added

    text, added = segment(crop[..., 0])
    assert "single-channel" in text and added == 0

    rgba = np.dstack([crop, np.full(crop.shape[:2], 128, np.uint8)])
    text, added = segment(rgba)
    assert "transparent" in text and added == 0

    text, added = segment(crop.astype(np.float32) * 4.0)
    assert "expected [0, 1] or [0, 255]" in text and added == 0

    text, added = segment(np.zeros((1, 1, 3), np.uint8))
    assert "at least" in text and added == 0

    text, added = segment(np.full((128, 128, 3), 255, np.uint8))
    assert "No nuclei found" in text and added == 0

    text, added = segment(np.zeros((128, 128, 3), np.uint8))  # empty: all black, no tissue
    assert "No nuclei found" in text and added == 0

    # Convertible inputs are converted, not refused: 16-bit and float 0-1 RGB segment fine.
    for data in (crop.astype(np.uint16) * 257, crop.astype(np.float64) / 255.0):
        text, added = segment(data)
        assert added == 1 and text.startswith("Segmented ("), text

    pts = viewer.add_points(np.array([[5.0, 5.0]]), name="clicks")
    viewer.layers.selection.active = pts
    assert "'clicks' is a Points layer, not an image" in widget.status.text()
    _click(qtbot, widget.classify_btn)  # nothing to work on: the reason, not a crash
    assert "No RGB image layer" in widget.status.text()
    assert not widget.busy


@pytest.mark.gui
def test_user_layer_with_the_same_name_is_kept(viewer_widget, qtbot, sample_rgb):
    viewer, widget = viewer_widget
    import torch

    cuda = widget.device_combo.model().item(widget.device_combo.findText("cuda"))
    assert cuda.isEnabled() == torch.cuda.is_available()
    assert widget.backend_combo.itemText(0) == "auto" and widget.backend_combo.findText("watershed") > 0
    viewer.add_image(_crop(sample_rgb, 200), name="he", rgb=True)
    assert widget.mpp_hint.text().startswith("(not in the file")
    widget.mpp_spin.setValue(0.5)
    mine = viewer.add_labels(np.zeros((200, 200), np.int32), name="he nuclei")
    viewer.layers.selection.active = viewer.layers["he"]
    _run(qtbot, widget, widget.segment_btn)
    assert not np.any(mine.data) and L.owner_record(mine) is None
    out = viewer.layers["he nuclei [1]"]
    _assert_features_match(out)
    assert "'he nuclei' was kept because it is your layer" in widget.status.text()
    # A second run replaces the plugin's layer, still never the user's.
    _run(qtbot, widget, widget.segment_btn)
    assert [layer.name for layer in viewer.layers] == ["he", "he nuclei", "he nuclei [1]"]


@pytest.mark.gui
def test_cancel_stops_the_run_and_ui_stays_responsive(viewer_widget, qtbot, consep_dir, tmp_path):
    """Cancel midway: no layer, no file; the event loop keeps running while the worker works."""
    from PIL import Image
    from qtpy.QtCore import QTimer

    viewer, widget = viewer_widget
    rgb = np.asarray(Image.open(consep_dir / "train_1.jpg").convert("RGB"))
    viewer.add_image(rgb, name="consep", rgb=True, metadata={"mpp": 0.25})
    assert widget.mpp_spin.value() == pytest.approx(0.25)
    widget.export_dir_edit.setText(str(tmp_path))

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget.progress.value()))
    timer.start(10)
    _click(qtbot, widget.measure_btn)
    assert widget.busy and widget.cancel_btn.isEnabled()
    assert not widget.classify_btn.isEnabled()  # one run at a time
    qtbot.wait(300)
    _click(qtbot, widget.cancel_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    timer.stop()
    assert widget.status.text().startswith("Cancelled"), widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["consep"]
    assert list(tmp_path.iterdir()) == []
    assert len(ticks) >= 10, "the event loop stalled while the worker ran"
    assert widget.progress.value() == 0 and not widget.cancel_btn.isEnabled()

    # The same run, not cancelled, measures the 1000x1000 field; the UI kept ticking throughout.
    ticks.clear()
    timer.start(10)
    _run(qtbot, widget, widget.measure_btn)
    timer.stop()
    nuclei = viewer.layers["consep nuclei"]
    assert widget.status.text().startswith("Segmented ("), widget.status.text()
    _assert_features_match(nuclei)
    assert len(nuclei.features.columns) > 20  # radiomics columns
    assert len(ticks) >= 10 and len(set(ticks)) > 2  # the bar moved while the loop ran

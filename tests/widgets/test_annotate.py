"""Cell-class annotation: the table logic (headless), project folders, and the dock in napari.

The ``gui`` test opens a real BRCA-M2C patch, classifies it with the classifier dock, turns on
annotation mode, corrects cells with clicks (through napari's own mouse-callback dispatch),
a Shift+drag stroke and the T/N/U keys, edits nuclei with the Labels tools, derives classes
from a points layer and a region, saves the project, reloads it and checks every class came
back. It writes docs/screenshot_annotate.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _docks import _dock
from napari_uam import annotation as A

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot_annotate.png"
RUN_TIMEOUT_MS = 120_000


def _labels():
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 1  # 16 px
    lab[10:14, 10:14] = 2
    lab[2:6, 12:18] = 3
    return lab


def _table(ids=(1, 2, 3), classes=("tumor", "non-tumor", "tumor")):
    return pd.DataFrame(
        {"label": list(ids), "y": 0.0, "x": 0.0, "class": list(classes), "f1": [1.0, 2.0, 3.0][: len(ids)]}
    )


# --------------------------------------------------------------------------- headless
def test_model_classes_become_annotations_and_clicks_are_user_corrections():
    t = A.with_annotation_columns(_table())
    assert t["annotation"].tolist() == ["model"] * 3
    t2, n = A.set_class(t, [2, 99], A.TUMOR)
    assert (
        n == 1
        and t2.loc[t2.label == 2, "class"].item() == "tumor"
        and t2.loc[t2.label == 2, "annotation"].item() == "user"
    )
    assert t["class"].tolist() == ["tumor", "non-tumor", "tumor"], "input table untouched"
    assert A.counts(t2) == {"tumor": 3, "non-tumor": 0, "unlabelled": 0, "corrected": 1}
    with pytest.raises(ValueError, match="Unknown class"):
        A.set_class(t, [1], "cancer")
    # Dataset class names map onto the two classes; blanks are unlabelled.
    assert [A.class_of(c) for c in ("Tumor", "stromal", "lymphocyte", None, "", 1)] == [
        "tumor", "non-tumor", "non-tumor", "unlabelled", "unlabelled", "tumor"]  # fmt: skip


def test_table_follows_labels_tool_edits():
    lab = _labels()
    lab[lab == 3] = 0  # erased
    lab[15:19, 2:6] = 7  # painted a new nucleus
    lab[12:14, 10:14] = 8  # split nucleus 2
    t, added, removed = A.sync_to_labels(_table(), lab)
    assert added == [7, 8] and removed == [3]
    assert t["label"].tolist() == [1, 2, 7, 8]
    new = t[t.label.isin([7, 8])]
    assert (new["class"] == A.UNLABELLED).all() and (new["annotation"] == "none").all()
    np.testing.assert_allclose(new[["y", "x"]].to_numpy(), [[16.5, 3.5], [12.5, 11.5]])
    assert np.isnan(new["f1"]).all()  # features are measured again before training


def test_classes_from_region_use_the_half_overlap_rule():
    lab = _labels()
    mask = np.zeros_like(lab, bool)
    mask[2:6, 2:5] = True  # 12 of nucleus 1's 16 pixels
    mask[10:12, 10:14] = True  # exactly half of nucleus 2: not more than half
    cls = A.classes_from_mask(lab, mask)
    assert cls.to_dict() == {1: "tumor", 2: "non-tumor", 3: "non-tumor"}
    with pytest.raises(ValueError, match="same image"):
        A.classes_from_mask(lab, mask[:10])
    # A region never undoes a hand correction.
    mine, _ = A.set_class(_table(), [1], A.NON_TUMOR)
    out, n = A.apply_classes(mine, cls, "region")
    assert out.set_index("label")["annotation"].to_dict() == {1: "user", 2: "region", 3: "region"}
    assert out.set_index("label")["class"].to_dict() == {1: "non-tumor", 2: "non-tumor", 3: "non-tumor"} and n == 2


def test_classes_from_points_under_or_nearest_within_radius():
    lab = _labels()
    # On nucleus 1; 2 px (1 um) beside nucleus 2's centroid; far from everything.
    pts = np.array([[3, 3], [11.5, 15.0], [18, 18]])
    cls = A.classes_from_points(lab, pts, ["lymphocyte", "tumor", "tumor"], mpp=0.5, radius_um=3.0)
    assert cls.to_dict() == {1: "non-tumor", 2: "tumor"}
    assert A.classes_from_points(lab, pts[:1]).to_dict() == {1: "tumor"}  # no classes: tumor points


def test_project_round_trip_and_safety(brca_dir, tmp_path):
    from PIL import Image

    from napari_uam import pipeline
    from napari_uam.io.project import FORMAT_VERSION, ProjectError, find_projects, load_project, save_project

    img = sorted((brca_dir / "val").glob("*.jpg"))[0]
    rgb = np.asarray(Image.open(img).convert("RGB"))[:256, :256].copy()
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    table = A.with_annotation_columns(pipeline.cell_geometry(labels, 0.5))
    table, _ = A.set_class(table, table["label"][:5], A.TUMOR)
    region = np.zeros(labels.shape, bool)
    region[:100] = True
    out = save_project(tmp_path / "p1", rgb, labels, table, 0.5, region=region, name="patch")
    proj = load_project(out)
    np.testing.assert_array_equal(proj.image, rgb)
    np.testing.assert_array_equal(proj.labels, labels)
    np.testing.assert_array_equal(proj.region, region)
    pd.testing.assert_frame_equal(proj.table, table, check_dtype=False)
    assert proj.mpp == 0.5 and proj.name == "patch" and proj.meta["classes"]["corrected"] == 5
    assert find_projects(tmp_path) == [out] and find_projects(out) == [out]

    # Never replaced without overwrite=True; replaced whole with it; no temporary folders left.
    with pytest.raises(FileExistsError):
        save_project(out, rgb, labels, table, 0.5)
    t2, _ = A.set_class(table, table["label"][:5], A.NON_TUMOR)
    save_project(out, rgb, labels, t2, 0.5, overwrite=True)
    assert (load_project(out).table["class"][:5] == A.NON_TUMOR).all()
    assert not (out / "region.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p1"]
    # A folder that is not a project is never replaced, even with overwrite.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ProjectError, match="never replaced"):
        save_project(tmp_path / "mine", rgb, labels, table, 0.5, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # Mismatched parts and other versions are refused with the reason.
    with pytest.raises(ProjectError, match="does not match the nuclei"):
        save_project(tmp_path / "p2", rgb, labels, table.iloc[1:], 0.5)
    meta = json.loads((out / "project.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (out / "project.json").write_text(json.dumps(meta))
    with pytest.raises(ProjectError, match="Upgrade napari-uam"):
        load_project(out)
    with pytest.raises(ProjectError, match="No napari-uam annotation project"):
        find_projects(tmp_path / "mine")


# ------------------------------------------------------------------------------- GUI
def _click(qtbot, button):
    from qtpy.QtCore import Qt

    assert button.isEnabled(), f"{button.text()} is disabled"
    if type(button).__name__ == "QCheckBox":  # a check box toggles on its box, not anywhere in its row
        from qtpy.QtCore import QPoint

        qtbot.mouseClick(button, Qt.MouseButton.LeftButton, pos=QPoint(8, button.height() // 2))
        return
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def mouse(layer, kind, position, modifiers=()):
    """Send one mouse event through napari's own callback dispatch (as the canvas does)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    event = read_only_mouse_event(type=kind, is_dragging=kind == "mouse_move", modifiers=list(modifiers),
                                  position=tuple(position), button=1)  # fmt: skip
    {"mouse_press": mouse_press_callbacks, "mouse_move": mouse_move_callbacks,
     "mouse_release": mouse_release_callbacks}[kind](layer, event)  # fmt: skip


def click(layer, position, modifiers=()):
    mouse(layer, "mouse_press", position, modifiers)
    mouse(layer, "mouse_release", position, modifiers)


def centre_of(layer, lab):
    """A pixel inside nucleus ``lab`` (its most interior one)."""
    from scipy import ndimage

    m = np.asarray(layer.data) == lab
    d = ndimage.distance_transform_edt(m)
    return tuple(float(v) for v in np.unravel_index(np.argmax(d), m.shape))


def classify_patch(viewer, qtbot, path, name):
    """Open a real patch and classify it with the classifier dock; returns (image, nuclei layer)."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    image = viewer.add_image(rgb, name=name, rgb=True, metadata={"mpp": 0.5, "source": str(path)})
    _, classifier = viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
    classifier.image_combo.setCurrentText(name)
    _click(qtbot, classifier.classify_btn)
    qtbot.waitUntil(lambda: not classifier.busy, timeout=RUN_TIMEOUT_MS)
    assert classifier.status.text().startswith("Segmented ("), classifier.status.text()
    return image, viewer.layers[f"{name} nuclei"]


@pytest.mark.gui
def test_annotation_mode_corrects_saves_and_reloads(make_napari_viewer, qtbot, brca_dir, tmp_path):
    from napari_uam.classify.checkpoint import default_weights_path
    from napari_uam.widgets import _layers as L

    if not default_weights_path().is_file():
        pytest.skip("default UAM weights not installed")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    path = sorted((brca_dir / "val").glob("*.jpg"))[1]
    image, nuclei = classify_patch(viewer, qtbot, path, "brca")
    predicted = nuclei.features.set_index("label")["class"].copy()
    _, widget = viewer.window.add_plugin_dock_widget("napari-uam", "UAM annotate cells")
    assert widget.layer_combo.currentText() == nuclei.name

    _click(qtbot, widget.mode_check)
    assert widget.mode_check.isChecked() and widget._on_mouse in nuclei.mouse_drag_callbacks
    assert nuclei.colormap.map(np.array([0]))[0, 3] == 0.0  # background stays transparent

    # A click on a nucleus sets the current class; a pan (press, move, release) does not.
    ids = nuclei.features["label"].tolist()
    a, b, c, d = ids[:4]
    widget.class_buttons["non-tumor"].setChecked(True)
    click(nuclei, centre_of(nuclei, a))
    feats = nuclei.features.set_index("label")
    assert feats.loc[a, "class"] == "non-tumor" and feats.loc[a, "annotation"] == "user"
    widget.class_buttons["tumor"].setChecked(True)
    mouse(nuclei, "mouse_press", centre_of(nuclei, b))
    mouse(nuclei, "mouse_move", centre_of(nuclei, c))
    mouse(nuclei, "mouse_release", centre_of(nuclei, c))
    assert nuclei.features.set_index("label").loc[b, "annotation"] == "model", "a pan changed a class"
    # Shift+drag paints the class over every nucleus crossed. A real event carries vispy's
    # Key object, not the string "Shift" (the Shift+drag test below drives it with real QMouseEvents).
    from vispy.util.keys import SHIFT

    mouse(nuclei, "mouse_press", centre_of(nuclei, b), [SHIFT])
    mouse(nuclei, "mouse_move", centre_of(nuclei, c), [SHIFT])
    mouse(nuclei, "mouse_release", centre_of(nuclei, c), [SHIFT])
    feats = nuclei.features.set_index("label")
    assert (feats.loc[[b, c], "class"] == "tumor").all() and (feats.loc[[b, c], "annotation"] == "user").all()
    # Keyboard: U on the nucleus under the cursor.
    viewer.cursor.position = nuclei.data_to_world(centre_of(nuclei, d))
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_U)  # through napari's key dispatch to the active layer
    assert nuclei.features.set_index("label").loc[d, "class"] == "unlabelled"
    assert widget.class_buttons["unlabelled"].isChecked()
    # Colours follow the classes; the layer now counts as edited, so Classify never replaces it.
    rgba = nuclei.colormap.map(np.array([a, b, d]))
    np.testing.assert_allclose(rgba[0], A.CLASS_COLORS["non-tumor"])
    np.testing.assert_allclose(rgba[1], A.CLASS_COLORS["tumor"])
    np.testing.assert_allclose(rgba[2], A.CLASS_COLORS["unlabelled"])
    assert L.is_edited(nuclei)
    assert "4 set by you" in widget.status.text(), widget.status.text()

    for layer in viewer.layers:  # the screenshot shows the image and the class colours only
        layer.visible = layer in (image, nuclei)
    viewer.layers.selection.active = nuclei
    qtbot.wait(200)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = viewer.screenshot(path=str(SCREENSHOT), canvas_only=False)
    assert shot.shape[0] > 400 and shot.shape[1] > 800

    # Labels tools: erase nucleus c, paint a new one; the table follows (new = unlabelled).
    data = np.array(nuclei.data)
    data[data == c] = 0
    data[:6, :6] = 9999
    nuclei.data = data
    qtbot.waitUntil(lambda: 9999 in nuclei.features["label"].tolist(), timeout=5000)
    feats = nuclei.features.set_index("label")
    assert c not in feats.index and feats.loc[9999, "class"] == "unlabelled"

    # Classes from a points layer (the dataset's own annotations) and from a region.
    pts = pd.read_csv(str(path)[:-4] + "_points.csv")
    viewer.add_points(pts[["y", "x"]].to_numpy(), name="cells", features={"class": pts["class"].to_numpy()})
    widget.source_combo.setCurrentText("cells")
    _click(qtbot, widget.derive_btn)
    feats = nuclei.features.set_index("label")
    assert "labelled from 'cells'" in widget.status.text()
    by_points = feats[feats["annotation"] == "points"]
    assert len(by_points) > 0.5 * len(pts)
    assert {"tumor", "non-tumor"} == set(by_points["class"])
    region = np.zeros(nuclei.data.shape, np.uint8)
    region[: region.shape[0] // 3] = 1
    viewer.add_labels(region, name="tumor region")
    widget.source_combo.setCurrentText("tumor region")
    _click(qtbot, widget.derive_btn)
    feats = nuclei.features.set_index("label")
    top = feats[(feats["y"] < region.shape[0] / 3 - 10) & (feats["annotation"] != "user")]
    assert len(top) > 10 and (top["class"] == "tumor").all() and (top["annotation"] == "region").all()
    # Hand corrections survive a coarse region: nucleus a stays non-tumor wherever it lies.
    assert feats.loc[a, "class"] == "non-tumor" and feats.loc[a, "annotation"] == "user"

    # Save the project, reload it: every class and the region come back.
    saved = nuclei.features.copy()
    out = widget.save_project(str(tmp_path / "brca_project"))
    assert out is not None and "Saved project" in widget.status.text()
    _click(qtbot, widget.mode_check)  # off: the layer gets its own colours back
    assert widget._on_mouse not in nuclei.mouse_drag_callbacks
    reloaded = widget.open_project(str(out))
    assert reloaded.name == "brca [1] nuclei"
    np.testing.assert_array_equal(reloaded.data, nuclei.data)
    got = reloaded.features.set_index("label")[["class", "annotation"]]
    want = saved.set_index("label")[["class", "annotation"]]
    pd.testing.assert_frame_equal(got, want)
    assert "tumor region" in " ".join(x.name for x in viewer.layers if x.name.startswith("brca [1]"))
    # The model's predictions are untouched where nobody corrected them.
    model_rows = want[want["annotation"] == "model"].index
    assert (predicted.loc[model_rows].map(A.class_of) == want.loc[model_rows, "class"]).all()


# ------------------------------------ Shift+drag with real Qt mouse events, and undo (issue 18)
def _segmented_patch(viewer, brca_dir, index=0, size=None):
    """A real BRCA-M2C patch and its watershed nuclei (geometry table) in the viewer."""
    from napari_uam import annotation as A
    from napari_uam import pipeline
    from napari_uam.widgets import _layers as L

    path = sorted((brca_dir / "val").glob("*.jpg"))[index]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    if size:
        rgb = np.ascontiguousarray(rgb[:size, :size])
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    table = A.with_annotation_columns(pipeline.cell_geometry(labels, 0.5))
    image = viewer.add_image(rgb, name="he", rgb=True, metadata={"mpp": 0.5})
    nuclei = viewer.add_labels(labels, name="he nuclei", features=L.to_features(table))
    return image, nuclei


def _canvas_xy(viewer, layer, yx):
    """Canvas widget pixel of data point ``yx`` of ``layer`` (through vispy's own transform)."""
    qt_viewer = viewer.window._qt_viewer
    node = qt_viewer.canvas.layer_to_visual[layer].node
    tr = node.get_transform("visual", "canvas")
    x, y = tr.map([yx[1], yx[0], 0, 1])[:2]
    return float(x), float(y)


def _qt_drag(qtbot, viewer, layer, path_yx, modifiers):
    """Press, move along ``path_yx`` and release the left button on napari's canvas with real
    QMouseEvents carrying ``modifiers``, as Qt delivers a user's drag."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    canvas = viewer.window._qt_viewer.canvas.native
    left = Qt.MouseButton.LeftButton
    none = Qt.MouseButton.NoButton
    pts = [QPointF(*_canvas_xy(viewer, layer, p)) for p in path_yx]
    steps = [(QEvent.Type.MouseButtonPress, pts[0], left, left)]
    for a, b in zip(pts[:-1], pts[1:]):
        for t in np.linspace(0.2, 1.0, 5):
            steps.append((QEvent.Type.MouseMove, a + (b - a) * float(t), none, left))
    steps.append((QEvent.Type.MouseButtonRelease, pts[-1], left, none))
    for kind, pos, button, buttons in steps:
        glob = QPointF(canvas.mapToGlobal(pos.toPoint()))
        QApplication.sendEvent(canvas, QMouseEvent(kind, pos, glob, button, buttons, modifiers))
        qtbot.wait(5)


def _centre(layer, lab):
    from scipy import ndimage

    m = np.asarray(layer.data) == lab
    return np.unravel_index(np.argmax(ndimage.distance_transform_edt(m)), m.shape)


@pytest.mark.gui
def test_shift_drag_with_real_qt_mouse_events_paints_the_class(make_napari_viewer, qtbot, brca_dir):
    """Shift+drag across nuclei on napari's canvas (real QMouseEvents, Shift modifier): every
    nucleus crossed gets the current class; the same drag without Shift is a pan and changes
    nothing."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    image, nuclei = _segmented_patch(viewer, brca_dir, size=256)
    widget = _dock(viewer, "UAM annotate cells")
    widget.layer_combo.setCurrentText(nuclei.name)
    widget.set_mode(True)
    viewer.reset_view()
    qtbot.wait(100)
    feats = nuclei.features
    big = feats.sort_values("area_um2", ascending=False)["label"].tolist()[:3]
    path = [_centre(nuclei, lab) for lab in big]
    widget.class_buttons["non-tumor"].setChecked(True)

    # Without Shift: a pan, no class changes.
    _qt_drag(qtbot, viewer, nuclei, path, Qt.KeyboardModifier.NoModifier)
    assert set(nuclei.features["class"]) == {"unlabelled"}
    viewer.reset_view()
    qtbot.wait(50)
    # With Shift, as a real event carries it (vispy gives napari <Key 'Shift'>).
    _qt_drag(qtbot, viewer, nuclei, path, Qt.KeyboardModifier.ShiftModifier)
    got = nuclei.features.set_index("label")
    assert (got.loc[big, "class"] == "non-tumor").all(), got.loc[big, ["class", "annotation"]]
    assert (got.loc[big, "annotation"] == "user").all()
    assert (got["class"] == "non-tumor").sum() < len(got) // 2  # only the nuclei crossed


@pytest.mark.gui
def test_class_edits_undo_with_ctrl_z(make_napari_viewer, qtbot, brca_dir):
    """Real Shift+drag and key presses set classes; Ctrl+Z on the canvas (and the button) undo
    them one by one, newest first."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    _, nuclei = _segmented_patch(viewer, brca_dir, size=256)
    widget = _dock(viewer, "UAM annotate cells")
    widget.layer_combo.setCurrentText(nuclei.name)
    widget.set_mode(True)
    viewer.reset_view()
    qtbot.wait(100)
    big = nuclei.features.sort_values("area_um2", ascending=False)["label"].tolist()[:3]
    widget.class_buttons["tumor"].setChecked(True)
    _qt_drag(
        qtbot, viewer, nuclei, [_centre(nuclei, big[0]), _centre(nuclei, big[1])], Qt.KeyboardModifier.ShiftModifier
    )
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.cursor.position = nuclei.data_to_world(_centre(nuclei, big[2]))
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    got = nuclei.features.set_index("label")["class"]
    assert got[big[0]] == got[big[1]] == "tumor" and got[big[2]] == "non-tumor"

    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    got = nuclei.features.set_index("label")["class"]
    assert got[big[2]] == "unlabelled" and got[big[0]] == "tumor", "Ctrl+Z did not undo the last edit"
    assert "Undone" in widget.status.text()
    assert widget.undo_btn.isEnabled()
    _click(qtbot, widget.undo_btn)
    assert set(nuclei.features["class"]) == {"unlabelled"}
    assert not widget.undo_btn.isEnabled()
    np.testing.assert_allclose(nuclei.colormap.map(np.array([big[0]]))[0], (1.0, 0.85, 0.0, 1.0))

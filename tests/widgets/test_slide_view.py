"""A slide in napari (issue 20): opened through the plugin's reader as a lazy multiscale layer,
classified on the part in view, with the results placed on the slide at full-resolution
coordinates, and the same nuclei as the one-piece pipeline on that region."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_uam import pipeline, validation
from napari_uam.widgets import _layers as L
from napari_uam.widgets import _view as V

from _docks import RUN_TIMEOUT_MS, _click, _dock
from _ecosystem import qupath_geojson_problems
from _slides import write_svs

pytest.importorskip("openslide")
pytestmark = pytest.mark.gui
#: What the user sees after classifying the view of a slide (docs/cli.md, "Slides in napari").
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot_slide_view.png"


@pytest.fixture
def slide_viewer(make_napari_viewer, qtbot, tmp_path, consep_mosaic, monkeypatch):
    """napari with a 1024 x 1024 SVS of real CoNSeP H&E opened as a slide (the slide limit is
    lowered so that this small file counts as one), the classifier docked."""
    path = tmp_path / "consep.svs"
    mosaic = consep_mosaic([1, 2, 3, 4], 512)
    write_svs(path, mosaic, mpp=0.252)
    monkeypatch.setattr(validation, "MAX_PIXELS", 500_000)
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(path), plugin="napari-uam")
    widget = _dock(viewer)
    yield viewer, widget, layer, mosaic
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)


def _look_at(viewer, qtbot, layer, center, side) -> V.View:
    """Pan and zoom so that ``side`` level-0 pixels around ``center`` fill the canvas' shorter
    side; returns the view the dock then sees, checked against the canvas geometry."""
    viewer.camera.center = center
    h, w = viewer.canvas.size
    viewer.camera.zoom = min(h, w) / side
    qtbot.wait(50)
    view = V.view_of(layer, viewer)
    span_y, span_x = h / viewer.camera.zoom, w / viewer.camera.zoom
    want = [center[0] - span_y / 2, center[0] + span_y / 2, center[1] - span_x / 2, center[1] + span_x / 2]
    clipped = [max(0, want[0]), min(1024, want[1]), max(0, want[2]), min(1024, want[3])]
    np.testing.assert_allclose(view.as_list(), clipped, atol=1.0)
    return view


def test_classify_the_view_of_a_slide(slide_viewer, qtbot, tmp_path):
    viewer, widget, layer, mosaic = slide_viewer
    assert layer.multiscale and layer.metadata["mpp"] == pytest.approx(0.252)
    assert widget.mpp_spin.value() == pytest.approx(0.252, abs=1e-3)
    view = _look_at(viewer, qtbot, layer, (600, 420), 300)
    assert view.y0 > 0 and view.x0 > 0 and view.y1 < 1024 and view.x1 < 1024

    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    text = widget.status.text()
    assert "classified" in text and f"Analysed the view: {view.describe()}" in text, text
    nuclei = viewer.layers[f"{layer.name} nuclei"]
    # The nuclei of the region in view, placed where they lie on the slide.
    assert nuclei.data.shape == view.shape
    np.testing.assert_allclose(nuclei.translate, [view.y0, view.x0])
    assert L.owner_record(nuclei)["view"] == view.as_list()
    # The same nuclei and classes as the one-piece pipeline on that region of level 0.
    ref = pipeline.run(mosaic[view.y0 : view.y1, view.x0 : view.x1], 0.252, device="cpu", tumor_mask=False)
    np.testing.assert_array_equal(np.asarray(nuclei.data), ref.labels)
    got = nuclei.features.set_index("label")["class"].astype(str)
    assert got.to_dict() == ref.table.set_index("label")["class"].astype(str).to_dict()
    # A nucleus seen on the slide is the same nucleus in the labels layer.
    lab = int(np.max(nuclei.data))
    yx = np.argwhere(np.asarray(nuclei.data) == lab).mean(axis=0)
    world = np.asarray(nuclei.data_to_world(yx))
    np.testing.assert_allclose(world, yx + [view.y0, view.x0])
    # Exported, the cells are in the slide's pixels (QuPath places them on the slide); the
    # labels TIFF is the region's, its offset in the provenance.
    nuclei_export(qtbot, widget, view, tmp_path / "export")
    # Zoomed out again, the classified region sits in its place on the slide.
    viewer.camera.center, viewer.camera.zoom = (512, 512), min(viewer.canvas.size) / 1100
    qtbot.wait(200)
    assert viewer.screenshot(path=str(SCREENSHOT), canvas_only=False).shape[0] > 400

    # Panned elsewhere, the next click analyses the new view, not the old nuclei.
    moved = _look_at(viewer, qtbot, layer, (300, 700), 300)
    assert moved != view
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    nuclei = viewer.layers[f"{layer.name} nuclei"]
    assert nuclei.data.shape == moved.shape
    np.testing.assert_allclose(nuclei.translate, [moved.y0, moved.x0])


def nuclei_export(qtbot, widget, view: V.View, out: Path) -> Path:
    widget.export_dir_edit.setText(str(out))
    _click(qtbot, widget.export_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    assert widget.status.text().startswith("Exported to"), widget.status.text()
    labels = tifffile.imread(next(out.glob("*_nuclei.tif")))
    assert labels.shape == view.shape
    table = pd.read_csv(next(out.glob("*_cells.csv"))).set_index("label")
    doc = json.loads(next(out.glob("*_cells.geojson")).read_text())
    assert qupath_geojson_problems(doc, "detection") == []
    for f in doc["features"][:20]:
        lab = f["properties"]["measurements"]["label"]
        ring = np.asarray(f["geometry"]["coordinates"][0])
        ys, xs = np.nonzero(labels == lab)
        # The polygon encloses the nucleus' pixels moved by the view's offset, and so does the
        # table's centroid.
        assert ring[:, 1].min() <= ys.min() + view.y0 and ring[:, 1].max() >= ys.max() + view.y0
        assert ring[:, 0].min() <= xs.min() + view.x0 and ring[:, 0].max() >= xs.max() + view.x0
        got = table.loc[lab, ["y", "x"]].to_numpy(float)
        np.testing.assert_allclose(got, [ys.mean() + view.y0, xs.mean() + view.x0], atol=1e-5)
    return out


def test_a_view_too_large_is_refused_with_what_to_do(slide_viewer, qtbot, monkeypatch):
    viewer, widget, layer, _ = slide_viewer
    monkeypatch.setattr(V, "VIEW_MAX_PIXELS", 200 * 200)
    _look_at(viewer, qtbot, layer, (512, 512), 800)
    n_layers = len(viewer.layers)
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    text = widget.status.text()
    assert "Zoom in" in text and "napari-uam classify" in text, text
    assert len(viewer.layers) == n_layers


def test_classify_inside_drawn_shapes(slide_viewer, qtbot):
    """A polygon drawn on the slide: the dock analyses only inside it (outside is glass), on
    level 0 of the slide, and places the nuclei where they lie."""
    viewer, widget, layer, mosaic = slide_viewer
    poly = np.array([[520, 300], [520, 620], [760, 700], [800, 320]], dtype=float)
    shapes = viewer.add_shapes([poly], shape_type="polygon", name="area")
    viewer.layers.selection.active = shapes
    assert "choose it under Area" in widget.status.text()
    widget.area_combo.setCurrentIndex(widget.area_combo.findData("area"))
    viewer.layers.selection.active = layer
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    text = widget.status.text()
    assert "Analysed inside the drawn shape" in text, text
    nuclei = viewer.layers[f"{layer.name} nuclei"]
    y0, x0 = 520, 300
    assert nuclei.data.shape == (800 - y0 + 1, 700 - x0 + 1)
    np.testing.assert_allclose(nuclei.translate, [y0, x0])
    # No nucleus outside the polygon: every labelled pixel lies inside (or on) it.
    from skimage.draw import polygon as fill

    inside = np.zeros(nuclei.data.shape, bool)
    inside[fill(poly[:, 0] - y0, poly[:, 1] - x0, shape=inside.shape)] = True
    labelled = np.asarray(nuclei.data) > 0
    assert labelled.sum() > 500 and not (labelled & ~inside).any()
    # The same nuclei as the pipeline on that region with the outside painted white.
    crop = mosaic[y0:801, x0:701].copy()
    crop[~inside] = 255
    ref = pipeline.run(crop, 0.252, device="cpu", tumor_mask=False)
    np.testing.assert_array_equal(np.asarray(nuclei.data), ref.labels)


def test_lines_enclose_no_area(slide_viewer, qtbot):
    viewer, widget, layer, _ = slide_viewer
    viewer.add_shapes([np.array([[100, 100], [400, 400]], float)], shape_type="line", name="cut")
    viewer.layers.selection.active = layer
    widget.area_combo.setCurrentIndex(widget.area_combo.findData("cut"))
    n_layers = len(viewer.layers)
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    assert "no rectangle, polygon or ellipse" in widget.status.text(), widget.status.text()
    assert len(viewer.layers) == n_layers


def _whole_slide(widget, monkeypatch, out: Path) -> None:
    from napari_uam.widgets import classifier

    monkeypatch.setattr(classifier, "_SLIDE_TILE", 512)  # four tiles on the small test slide
    widget.area_combo.setCurrentIndex(widget.area_combo.findData(classifier._SLIDE_DATA))
    widget.export_dir_edit.setText(str(out))


def test_classify_the_whole_slide_in_the_background(slide_viewer, qtbot, monkeypatch, tmp_path):
    """The command line's tiled run from the dock: progress per tile, the files in the export
    folder, the nuclei shown as a multiscale labels layer read from the labels TIFF's pyramid."""
    viewer, widget, layer, _ = slide_viewer
    out = tmp_path / "slide_out"
    _whole_slide(widget, monkeypatch, out)
    seen = []
    widget.progress.valueChanged.connect(seen.append)
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    text = widget.status.text()
    assert text.startswith("Whole slide: ") and "nuclei shown as 'consep slide nuclei'" in text, text
    assert len({v for v in seen if 0 < v < 100}) >= 3  # the bar moved tile by tile
    done = json.loads((out / "consep.done.json").read_text())
    assert done["provenance"]["tiled"] and done["provenance"]["n_tiles"] == 4
    nuclei = viewer.layers["consep slide nuclei"]
    assert nuclei.multiscale and len(nuclei.data) == 2
    labels = tifffile.imread(out / "consep_nuclei.tif")
    np.testing.assert_array_equal(np.asarray(nuclei.data[0]), labels)
    np.testing.assert_array_equal(np.asarray(nuclei.data[1]), labels[::4, ::4])
    assert int(labels.max()) == done["n_cells"] and f"{done['n_cells']:,} nuclei" in text
    # Coloured by class as the patch results are (tumor green, non-tumor blue), from the table.
    from napari_uam.widgets import _display as D

    table = pd.read_parquet(out / "consep_cells.parquet", columns=["label", "class"])
    for cls, colour in (("tumor", D.TUMOR), ("non-tumor", D.NON_TUMOR)):
        labs = table.loc[table["class"] == cls, "label"].to_numpy()[:5]
        assert len(labs), cls
        np.testing.assert_allclose(nuclei.colormap.map(labs), np.tile(D.CLASS_RGBA[colour], (len(labs), 1)))
    # Hovering a nucleus shows its row, as on a patch (whatever level napari draws).
    yx = np.argwhere(np.asarray(nuclei.data[1]) > 0)[0] * 4
    hover = nuclei._get_properties(tuple(float(v) for v in yx), world=True)
    assert any(h.startswith("label: ") for h in hover) and any(h.startswith("class: ") for h in hover), hover
    # A second click finds the slide done in that folder: nothing recomputed, the layer replaced.
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    assert "already classified there (skipped)" in widget.status.text()
    assert [x.name for x in viewer.layers].count("consep slide nuclei") == 1


def test_cancel_a_whole_slide_run(slide_viewer, qtbot, monkeypatch, tmp_path):
    viewer, widget, layer, _ = slide_viewer
    out = tmp_path / "slide_out"
    _whole_slide(widget, monkeypatch, out)
    n_layers = len(viewer.layers)
    _click(qtbot, widget.classify_btn)
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=RUN_TIMEOUT_MS)  # the first tile is done
    _click(qtbot, widget.cancel_btn)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)
    assert widget.status.text().startswith("Cancelled: no output of 'consep' was written"), widget.status.text()
    assert len(viewer.layers) == n_layers
    assert sorted(p.name for p in out.iterdir()) == ["napari_uam_run.json"]
    assert json.loads((out / "napari_uam_run.json").read_text())["state"] == "interrupted"

"""The dock's 'tumor region' layer: Classify cells adds the multimodal tumor probability (or a
thresholded mask) of the image, at the image's resolution, and replaces only its own layer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_uam.widgets import _layers as L

RUN_TIMEOUT_MS = 240_000


def _run(qtbot, widget, button):
    from qtpy.QtCore import Qt

    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT_MS)


@pytest.mark.gui
def test_classify_adds_tumor_region_layer(make_napari_viewer, qtbot, regions_dir):
    from PIL import Image

    from napari.layers import Image as ImageLayer
    from napari.layers import Labels

    from napari_uam.classify.checkpoint import default_weights_path
    from napari_uam.tumor import tumor_weights_available

    if not (tumor_weights_available() and default_weights_path().is_file()):
        pytest.skip("shipped UAM / tumor-mask weights not installed")
    rgb = np.asarray(Image.open(sorted((regions_dir / "bcss").glob("*.jpg"))[0]).convert("RGB"))[:301, :257]
    viewer = make_napari_viewer()
    image = viewer.add_image(rgb, name="tile", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
    widget.mpp_spin.setValue(0.25)
    assert widget.region_combo.currentText() == "Probability image"  # on by default

    _run(qtbot, widget, widget.classify_btn)
    region = viewer.layers["tile tumor region"]
    assert isinstance(region, ImageLayer) and region.data.shape == rgb.shape[:2]
    prob = np.asarray(region.data)
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    assert L.owner_record(region)["kind"] == "tumor region"
    assert "tile tumor cells" in viewer.layers  # the cell layers are still there

    # The thresholded choice replaces the plugin's own (unedited) region layer by Labels.
    widget.region_combo.setCurrentText("Mask (p > 0.5)")
    _run(qtbot, widget, widget.classify_btn)
    regions = [lay for lay in viewer.layers if lay.name.startswith("tile tumor region")]
    assert len(regions) == 1 and isinstance(regions[0], Labels)
    np.testing.assert_array_equal(np.asarray(regions[0].data), (prob > 0.5).astype(np.int32))

    # "Off" adds no region layer and leaves the existing one alone.
    widget.region_combo.setCurrentText("Off")
    _run(qtbot, widget, widget.classify_btn)
    assert [lay.name for lay in viewer.layers if lay.name.startswith("tile tumor region")] == ["tile tumor region"]
    assert image.name in viewer.layers

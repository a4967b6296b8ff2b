"""The classifier dock (widgets/classifier.py), driven as a pathologist would.

Its status line carries the trust signal: out of domain on a recoloured image, "trust unknown"
with a checkpoint that has no trust model.
"""

from __future__ import annotations

import _trust_data
from _trust_data import _brca_image, _recoloured

scratch_checkpoint = _trust_data.scratch_checkpoint  # the fixture (shared with tests/test_domain.py)


def test_dock_says_so_when_the_image_is_out_of_domain(make_napari_viewer, qtbot, brca_dir):
    """Click Classify cells on a recoloured image: the dock's status carries the caution."""
    from qtpy.QtCore import Qt

    from napari_uam.widgets.classifier import ClassifierWidget

    _, rgb = _brca_image(brca_dir)
    viewer = make_napari_viewer()
    viewer.add_image(_recoloured(rgb), name="odd", rgb=True, metadata={"mpp": 0.5})
    widget = ClassifierWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.setCurrentText("odd")
    widget.mpp_spin.setValue(0.5)
    qtbot.mouseClick(widget.classify_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    assert "outside the classifier's training data" in widget.status.text(), widget.status.text()


def test_classifier_dock_says_the_trust_is_unknown(scratch_checkpoint, make_napari_viewer, qtbot, brca_dir):
    """Classify cells with a checkpoint that has no trust model: the status line says so."""
    from qtpy.QtCore import Qt

    from napari_uam.widgets.classifier import ClassifierWidget

    _, rgb = _brca_image(brca_dir)
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="patch", rgb=True, metadata={"mpp": 0.5})
    widget = ClassifierWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.setCurrentText("patch")
    widget.mpp_spin.setValue(0.5)
    widget.use_checkpoint(scratch_checkpoint[0])
    qtbot.mouseClick(widget.classify_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    text = widget.status.text()
    assert "trust unknown" in text and "from scratch" in text, text
    assert "outside the classifier's training data" not in text

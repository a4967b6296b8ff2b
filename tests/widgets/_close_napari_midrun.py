"""Run by tests/widgets/test_classifier_dock.py and test_train_dock.py in a subprocess: open napari,
start a run, close napari.

    python _close_napari_midrun.py classify IMAGE
    python _close_napari_midrun.py train IMAGE POINTS_CSV CHECKPOINT

``classify`` clicks Classify cells on IMAGE (0.25 um/px) and closes the viewer once the
progress bar moves; ``train`` puts a real BRCA-M2C patch with classes from its points file into
the viewer, clicks Train (many epochs, to CHECKPOINT) and closes the viewer once the first
epoch is reported. Both then wait for every napari worker to end (as the process would at
exit) and print ``CLOSED <seconds the close took>``; the exit code is the test's verdict.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from PIL import Image


def _wait(app, predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    return False


def main(argv) -> int:
    import napari
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    mode, image_path = argv[0], argv[1]
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    if mode == "classify":
        viewer.add_image(rgb, name="he", rgb=True, metadata={"mpp": 0.25})
        _, dock = viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
        dock.classify_btn.click()
        started = _wait(app, lambda: dock.progress.value() > 0, 120)
    else:
        import pandas as pd

        from napari_uam import annotation as A
        from napari_uam import pipeline
        from napari_uam.widgets import _layers as L

        points_csv, checkpoint = argv[2], argv[3]
        labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
        table = A.with_annotation_columns(pipeline.cell_geometry(labels, 0.5))
        pts = pd.read_csv(points_csv)
        classes = A.classes_from_points(labels, pts[["y", "x"]].to_numpy(), pts["class"].tolist(), 0.5)
        table, _ = A.apply_classes(table, classes, "points")
        viewer.add_image(rgb, name="he", rgb=True, metadata={"mpp": 0.5})
        viewer.add_labels(labels, name="he nuclei", features=L.to_features(table))
        _, dock = viewer.window.add_plugin_dock_widget("napari-uam", "UAM train classifier")
        dock.out_edit.setText(checkpoint)
        dock.epochs_spin.setValue(300)
        dock.patience_spin.setValue(0)
        dock.device_combo.setCurrentText("cpu")
        dock.train_btn.click()
        started = _wait(app, lambda: len(dock.plot.history) >= 2, 180)
    if not started:
        print("the run never started:", dock.status.text(), flush=True)
        return 3
    t0 = time.monotonic()
    viewer.close()
    took = time.monotonic() - t0
    # A process exits only after its threads: wait for every worker as exit would.
    QThreadPool.globalInstance().waitForDone(180_000)
    _wait(app, lambda: False, 0.5)
    print(f"CLOSED {took:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

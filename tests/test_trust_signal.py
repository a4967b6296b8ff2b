"""The trust signal: how far an image lies from the classifier's training data.

On an image from a training hospital the shipped classifier says "in domain"; the same image
recoloured as no hospital stains (hue rotated so that nuclei are green and stroma blue) is
flagged out of domain, with a warning on the command line, and the provenance records both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from napari_uam import pipeline
from napari_uam.domain import DomainModel, OutOfDomainWarning
from napari_uam.training.checkpoint import default_weights_path, load_classifier


def _brca_image(brca_dir):
    path = sorted((brca_dir / "val").glob("*.jpg"))[0]
    return path, np.asarray(Image.open(path).convert("RGB"))


def _recoloured(rgb):
    """Channels rotated R->G->B->R: a stain no hospital uses, same tissue and texture."""
    return np.ascontiguousarray(rgb[..., [2, 0, 1]])


def test_shipped_classifier_carries_domain_statistics_and_calibration():
    clf = load_classifier(device="cpu")
    assert clf.domain is not None and clf.domain.threshold > 0
    assert 0.2 < clf.temperature < 5


def test_in_domain_image_is_trusted_and_recoloured_one_is_flagged(brca_dir):
    _, rgb = _brca_image(brca_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDomainWarning)
        res = pipeline.run(rgb, 0.5, device="cpu", tumor_mask=False)
    dom = res.provenance["domain"]
    assert dom["in_domain"] and dom["distance"] <= dom["threshold"]
    assert set(res.provenance["stain"]) >= {"hematoxylin", "eosin", "max_conc"}
    p = res.table["tumor_probability"].to_numpy()
    assert np.all((p >= 0) & (p <= 1))

    with pytest.warns(OutOfDomainWarning, match="outside the classifier's training data"):
        odd = pipeline.run(_recoloured(rgb), 0.5, device="cpu", tumor_mask=False)
    assert not odd.provenance["domain"]["in_domain"]
    assert odd.provenance["domain"]["distance"] > dom["distance"]


def test_cli_warns_on_a_recoloured_image_and_records_it(brca_dir, tmp_path):
    _, rgb = _brca_image(brca_dir)
    src = tmp_path / "recoloured.png"
    Image.fromarray(_recoloured(rgb)).save(src)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "classify", str(src), "--out", str(out), "--mpp", "0.5", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "outside the classifier's training data" in proc.stderr
    done = json.loads((out / "recoloured.done.json").read_text())
    text = json.dumps(done)
    assert '"in_domain": false' in text


def test_domain_model_distance_grows_with_the_shift():
    rng = np.random.default_rng(0)
    stains = [{"hematoxylin": list(0.6 + rng.normal(0, 0.01, 3)), "eosin": list(0.3 + rng.normal(0, 0.01, 3)),
               "max_conc": list(0.8 + rng.normal(0, 0.02, 2))} for _ in range(60)]  # fmt: skip
    feats = [rng.normal(0, 1, (50, 12)) + rng.normal(0, 0.1, 12) for _ in range(60)]
    dm = DomainModel.fit(stains, feats)
    again = DomainModel.from_dict(json.loads(json.dumps(dm.to_dict())))
    near = again.score(stains[0], feats[0])
    far = again.score({**stains[0], "max_conc": [1.6, 1.6]}, feats[0] + 3)
    assert near.in_domain and not far.in_domain and far.distance > near.distance
    assert np.isnan(again.score(stains[0], feats[0][:3]).distance)  # too few cells: no verdict


def test_weights_file_is_the_shipped_one():
    assert default_weights_path().is_file()


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

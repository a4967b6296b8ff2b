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

import _trust_data
from _trust_data import _brca_image, _recoloured
from napari_uam import pipeline
from napari_uam.domain import MIN_CELLS, DomainModel, OutOfDomainWarning, UnknownDomainWarning
from napari_uam.classify.checkpoint import default_weights_path, load_classifier

scratch_checkpoint = _trust_data.scratch_checkpoint  # the fixture (shared with tests/widgets/test_classifier_dock.py)


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
    assert again.score(stains[0], feats[0][:3]).as_dict()["status"] == "unknown"

    # Anchors (fine-tuning images): distance = min(to the base mean, to the nearest anchor),
    # same threshold; they survive the checkpoint round trip and a second fine-tuning.
    far_desc = again.descriptor({**stains[0], "max_conc": [1.6, 1.6]}, feats[0] + 3)
    tuned = again.with_anchors([far_desc], ["odd"])
    tuned = DomainModel.from_dict(json.loads(json.dumps(tuned.to_dict())))
    hit = tuned.score({**stains[0], "max_conc": [1.6, 1.6]}, feats[0] + 3)
    assert hit.in_domain and hit.distance < 1e-6 and hit.as_dict()["nearest"] == "fine-tuning image odd"
    assert tuned.threshold == again.threshold
    base_hit = tuned.score(stains[0], feats[0])
    assert base_hit.distance == pytest.approx(near.distance) and base_hit.as_dict()["nearest"] == "base training data"
    twice = tuned.with_anchors([again.mean + 1.0], ["second"])
    assert twice.anchor_names == ["odd", "second"] and twice.anchors.shape == (2, len(again.mean))
    assert "anchors" not in again.to_dict() and "nearest" not in near.as_dict()  # the shipped kind: unchanged


def test_weights_file_is_the_shipped_one():
    assert default_weights_path().is_file()


# ------------------------------------------------- the trust model of fine-tuned checkpoints
def _recoloured_project(image_path, folder):
    """A pathologist's project on a recoloured BRCA-M2C patch: nuclei outlined (watershed on
    the original colours, as corrected outlines would be), classes from the dataset's points."""
    import pandas as pd

    from napari_uam import annotation as A
    from napari_uam.io.project import save_project

    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    table = pipeline.cell_geometry(labels, 0.5)
    pts = pd.read_csv(str(image_path)[: -len(".jpg")] + "_points.csv")
    classes = A.classes_from_points(labels, pts[["y", "x"]].to_numpy(), pts["class"], mpp=0.5)
    table, _ = A.apply_classes(table, classes, "points")
    save_project(folder, _recoloured(rgb), labels, table, 0.5, name=image_path.stem[:23])
    return _recoloured(rgb), labels


@pytest.fixture(scope="module")
def recoloured_finetune(brca_dir, tmp_path_factory):
    """`napari-uam train` from the shipped model on three annotated recoloured patches."""
    root = tmp_path_factory.mktemp("recoloured")
    images = sorted((brca_dir / "train").glob("*.jpg"))[:3]
    annotated = [_recoloured_project(p, root / "projects" / f"p{i}") for i, p in enumerate(images)]
    out = root / "recoloured.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "train", str(root / "projects"), "--out", str(out),
         "--epochs", "1", "--val-fraction", "0.34", "--seed", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, annotated, [p.stem[:23] for p in images], proc.stdout


def test_an_annotated_image_is_in_domain_for_the_model_fine_tuned_on_it(recoloured_finetune, brca_dir):
    from napari_uam.classify.checkpoint import read_checkpoint

    out, annotated, names, stdout = recoloured_finetune
    ck = read_checkpoint(out)
    base = read_checkpoint(default_weights_path())["domain"]
    dom = ck["domain"]
    # The base statistics are kept as they were; the three annotated images are the anchors.
    assert all(dom[k] == base[k] for k in ("feature_mean", "components", "mean", "precision", "threshold"))
    assert dom["anchor_names"] == sorted(names) and np.asarray(dom["anchors"]).shape == (3, len(base["mean"]))
    assert ck["training"]["trust"]["base"] == "uam_default" and ck["training"]["trust"]["skipped"] == []
    assert "Trust model: uam_default's statistics + 3 fine-tuning image(s) as anchors" in stdout
    assert "Trust signal (domain check)" in out.with_suffix(".md").read_text()

    rgb, labels = annotated[0]
    # The shipped model has never seen this stain: out of domain.
    with pytest.warns(OutOfDomainWarning):
        shipped = pipeline.run(rgb, 0.5, labels=labels, device="cpu", tumor_mask=False)
    assert shipped.provenance["domain"]["status"] == "out of domain"
    # The model fine-tuned on it judges it in domain, by the same threshold, nearest its anchor.
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDomainWarning)
        tuned = pipeline.run(rgb, 0.5, labels=labels, model=str(out), device="cpu", tumor_mask=False)
    d = tuned.provenance["domain"]
    assert (
        d["in_domain"] and d["status"] == "in domain" and d["threshold"] == pytest.approx(base["threshold"], abs=1e-3)
    )
    assert d["nearest"] == f"fine-tuning image {names[0]}"
    assert d["distance"] < shipped.provenance["domain"]["distance"]
    assert tuned.provenance["calibration_temperature"] == ck["calibration"]["temperature"]

    # Anchors do not make every image trusted: another stain, never annotated, stays out.
    _, val_rgb = _brca_image(brca_dir)
    other = np.ascontiguousarray(val_rgb[..., [1, 2, 0]])
    with pytest.warns(OutOfDomainWarning):
        odd = pipeline.run(other, 0.5, labels=pipeline.segment_nuclei(val_rgb, 0.5, backend="watershed"),
                           model=str(out), device="cpu", tumor_mask=False)  # fmt: skip
    assert odd.provenance["domain"]["status"] == "out of domain"


def test_a_checkpoint_without_a_trust_model_is_unknown_never_in_domain(scratch_checkpoint, brca_dir, tmp_path):
    """A model trained from scratch has no training statistics: the domain is "unknown", with
    the reason, on the command line (warning + done marker) and in the provenance."""
    from napari_uam.domain import UnknownDomainWarning
    from napari_uam.classify.checkpoint import load_classifier, read_checkpoint

    ckpt, card = scratch_checkpoint
    assert "domain" not in read_checkpoint(ckpt) and "**unknown**" in card.read_text()
    assert load_classifier(ckpt, device="cpu").domain is None
    _, rgb = _brca_image(brca_dir)
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")

    with pytest.warns(UnknownDomainWarning, match="cannot say whether this image is like its training data"):
        out = pipeline.run(rgb, 0.5, labels=labels, model=str(ckpt), device="cpu", tumor_mask=False)
    d = out.provenance["domain"]
    assert d["status"] == "unknown" and d["in_domain"] is None and "from scratch" in d["reason"]

    src = tmp_path / "patch.png"
    Image.fromarray(rgb).save(src)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "classify", str(src), "--out", str(tmp_path / "out"), "--mpp", "0.5",
         "--device", "cpu", "--model", str(ckpt)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "cannot say whether this image is like its training data" in proc.stderr
    done = json.loads((tmp_path / "out" / "patch.done.json").read_text())
    assert '"status": "unknown"' in json.dumps(done) and '"in_domain": true' not in json.dumps(done)


def test_too_few_cells_to_judge_is_unknown_not_out_of_domain(brca_dir):
    """A crop holding a handful of nuclei: the shipped model cannot judge it, and says so
    (status "unknown", an UnknownDomainWarning), instead of calling it "outside" at distance nan."""
    _, rgb = _brca_image(brca_dir)
    crop = None
    for y in range(0, rgb.shape[0] - 60, 60):  # the first 60 px window with 1..MIN_CELLS-1 nuclei
        win = np.ascontiguousarray(rgb[y : y + 60, :60])
        n = int(len(np.unique(pipeline.segment_nuclei(win, 0.5))) - 1)
        if 0 < n < MIN_CELLS:
            crop = win
            break
    assert crop is not None, "no 60 px window with a few nuclei in this field"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pipeline.run(crop, 0.5, device="cpu", tumor_mask=False)
    dom = res.provenance["domain"]
    assert dom["status"] == "unknown" and dom["in_domain"] is False and "at least" in dom["reason"]
    kinds = {type(w.message) for w in caught}
    assert UnknownDomainWarning in kinds and OutOfDomainWarning not in kinds

"""The default (no-weights) nuclei segmentation: API contract, edge cases and real-data quality."""

from __future__ import annotations

import numpy as np
import pytest

from _fields import _consep
from napari_uam.errors import InvalidImageError, UAMError
from napari_uam.scale import rescale_image
from napari_uam.segment import available_backends, resolve_backend, segment
from napari_uam.segment import metrics as M
from napari_uam.segment.stain import hematoxylin


def _read_rgb(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def consep_image(consep_dir):
    from PIL import Image

    rgb = _read_rgb(consep_dir / "train_21.jpg")  # a held-out image of the tuning protocol
    gt = np.asarray(Image.open(consep_dir / "train_21_inst.png")).astype(np.int32)
    return rgb, gt


@pytest.fixture(scope="module")
def consep_labels(consep_image):
    rgb, _ = consep_image
    return segment(rgb, mpp=0.25, backend="watershed")


# --- API contract ---------------------------------------------------------------------------


def test_backends_registry():
    assert "watershed" in available_backends()
    assert resolve_backend("watershed") == "watershed"
    assert resolve_backend("auto") == available_backends()[0]
    with pytest.raises(UAMError, match="available: auto, .*watershed"):
        resolve_backend("nope")
    with pytest.raises(UAMError, match="Unknown segmentation backend"):
        segment(np.zeros((32, 32, 3), np.uint8), 0.5, backend="nope")


@pytest.mark.parametrize("mpp", [0, -0.5, float("nan"), float("inf"), "x", None])
def test_bad_mpp_is_a_typed_error(mpp):
    with pytest.raises(InvalidImageError, match="mpp"):
        segment(np.full((32, 32, 3), 255, np.uint8), mpp)


def test_bad_image_is_a_typed_error():
    with pytest.raises(InvalidImageError):
        segment(np.zeros((32, 32), np.uint8), 0.5)
    with pytest.raises(InvalidImageError):
        segment(np.zeros((2, 2, 3), np.uint8), 0.5)


def test_unknown_parameter_is_rejected():
    with pytest.raises(UAMError, match="min_area_um2"):
        segment(np.full((32, 32, 3), 255, np.uint8), 0.5, min_area=3, backend="watershed")


@pytest.mark.parametrize("value", [255, 0, 128])
def test_uniform_images_have_no_nuclei(value):
    img = np.full((300, 400, 3), value, np.uint8)
    lab = segment(img, 0.5, backend="watershed")
    assert lab.shape == (300, 400) and lab.dtype == np.int32 and lab.max() == 0


def test_blank_noisy_white_image_has_no_nuclei():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(235, 6, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    assert segment(img, 0.5, backend="watershed").max() == 0


def test_eosin_only_tissue_has_no_nuclei():
    # Pink stroma (eosin only) with texture: stained, but no hematoxylin.
    rng = np.random.default_rng(1)
    base = np.array([235, 160, 200], np.float64)
    img = np.clip(base + rng.normal(0, 8, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    assert segment(img, 0.5, backend="watershed").max() == 0


def test_synthetic_nuclei_found_and_separated():
    # Pink background with 12 well separated dark-purple discs of 7 um diameter at 0.5 um/px.
    img = np.empty((200, 200, 3), np.uint8)
    img[:] = (235, 170, 210)
    yy, xx = np.mgrid[:200, :200]
    centres = [(30 + 45 * i, 30 + 45 * j) for i in range(3) for j in range(4)]
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2] = (70, 40, 130)
    progress = []
    lab = segment(img, 0.5, progress=lambda f, m: progress.append(f), backend="watershed")
    assert lab.max() == 12
    assert sorted(np.unique(lab).tolist()) == list(range(13))  # consecutive ids
    assert progress[0] == 0.0 and progress[-1] == 1.0
    # The same discs at 40x (0.25 um/px) give the same count.
    big = rescale_image(img, 2.0)
    assert segment(big, 0.25, backend="watershed").max() == 12


def test_stain_is_robust_to_brightness(consep_image):
    rgb, gt = consep_image
    dim = (rgb.astype(np.float32) * 0.85).astype(np.uint8)
    h, hd = hematoxylin(rgb), hematoxylin(dim)
    nuc = gt > 0
    # Glass and nuclei keep their hematoxylin level when the whole image is dimmed.
    assert abs(float(np.median(hd[nuc])) - float(np.median(h[nuc]))) < 0.05
    assert float(np.median(hd[~nuc])) < 0.1


# --- real data ------------------------------------------------------------------------------


def test_consep_count_and_f1(consep_image, consep_labels):
    _, gt = consep_image
    lab = consep_labels
    s = M.instance_scores(gt, lab)
    # Measured (watershed defaults): n_pred/n_true 196/261, F1@0.5 0.565, Dice 0.733, AJI 0.480.
    assert 0.5 < s["n_pred"] / s["n_true"] < 1.5
    assert s["f1"] > 0.50
    assert s["dice"] > 0.68
    assert s["aji"] > 0.43


def test_consep_centroid_detection(consep_image, consep_labels):
    _, gt = consep_image
    s = M.point_detection_scores(M.centroids(consep_labels), M.centroids(gt), radius=3.0 / 0.25)
    # Measured: P 0.91, R 0.69, F1 0.78 within 3 um.
    assert s["f1"] > 0.72


def test_20x_and_40x_give_similar_counts(consep_image, consep_labels):
    rgb, _ = consep_image
    n40 = int(consep_labels.max())
    lab20 = segment(rescale_image(rgb, 0.5), mpp=0.5, backend="watershed")
    assert lab20.shape == (500, 500)
    n20 = int(lab20.max())
    # Measured: 196 at 40x, 183 at 20x.
    assert abs(n20 - n40) / n40 < 0.15


def test_brca_val_points(brca_dir):
    path = sorted((brca_dir / "val").glob("*.jpg"))[0]
    rgb = _read_rgb(path)
    pts = np.loadtxt(str(path)[:-4] + "_points.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    lab = segment(rgb, mpp=0.5, backend="watershed")
    s = M.point_detection_scores(M.centroids(lab), pts.reshape(-1, 2), radius=3.0 / 0.5)
    # Measured: P 0.82, R 0.87, F1 0.85 on this image.
    assert s["f1"] > 0.78


# ------------------------------------------------------------------ Cancel (issue 18)
def test_watershed_polls_cancel_between_steps(consep_dir):
    from napari_uam.errors import CancelledError
    from napari_uam.segment import segment

    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1  # the second poll says stop

    with pytest.raises(CancelledError):
        segment(_consep(consep_dir), 0.25, backend="watershed", cancel=cancel)
    assert len(calls) == 2

"""The input check (issue 15): what is not brightfield H&E tissue is refused with a one-line
reason, every real H&E image of every source is accepted; the pixel-size estimate; the
nucleus dataset layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_uam import pipeline
from napari_uam.errors import InvalidImageError
from napari_uam.pixel_size import estimate_mpp
from napari_uam.validation import NotTissueError, as_rgb_uint8, check_he_tissue

REPO = Path(__file__).resolve().parents[1]


def _consep(shared_data):
    return np.asarray(Image.open(shared_data / "consep" / "train_1.jpg").convert("RGB"))[:400, :400]


def test_noise_blank_dark_and_grey_are_refused(shared_data):
    rng = np.random.default_rng(0)
    real = _consep(shared_data)
    cases = {
        "noise": (rng.integers(0, 256, (400, 400, 3), dtype=np.uint8), "noise"),
        "blank": (np.full((400, 400, 3), 238, np.uint8), "blank"),
        "dark": (real // 8, "underexposed"),
        "grey": (np.repeat(real.mean(-1, keepdims=True).astype(np.uint8), 3, -1), "no colour"),
    }
    for name, (img, word) in cases.items():
        with pytest.raises(NotTissueError, match=word):
            pipeline.segment_nuclei(img, 0.25)


def test_12_bit_data_in_16_bits_is_refused(shared_data):
    twelve = _consep(shared_data).astype(np.uint16) * 16  # values up to 4080
    with pytest.raises(InvalidImageError, match="12"):
        as_rgb_uint8(twelve)
    full = twelve * 16  # the same image scaled to the 16-bit range is fine
    assert as_rgb_uint8(full).dtype == np.uint8


def test_fluorescence_like_is_refused():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(2)
    spots = np.zeros((400, 400), np.float32)
    spots[rng.integers(0, 400, 80), rng.integers(0, 400, 80)] = 1.0
    blobs = ndi.gaussian_filter(spots, 4)
    img = np.zeros((400, 400, 3), np.uint8)  # black background, bright blue nuclei (DAPI-like)
    img[..., 2] = np.clip(blobs / blobs.max() * 255 + rng.normal(5, 2, blobs.shape), 0, 255)
    with pytest.raises(InvalidImageError, match="fluorescence"):
        pipeline.segment_nuclei(img, 0.25)


SOURCES = [
    "consep",
    "monuseg",
    "cpm15",
    "gbm40",
    "tcga_lgg",
    "dsb2018_he",
    "monusac",
    "puma",
    "brca_m2c/train",
    "brca_m2c/val",
    "regions/camelyon",
    "regions/bcss",
    "regions/wsss4luad",
    "regions/glas",
    "regions/ebhi",
]


@pytest.mark.parametrize("folder", SOURCES)
def test_real_he_of_every_source_is_accepted(shared_data, folder):
    files = sorted((shared_data / folder).glob("*.jpg"))
    if not files:
        pytest.skip(f"{folder} absent from ../shared/data")
    for f in files[:: max(1, len(files) // 8)]:
        check_he_tissue(np.asarray(Image.open(f).convert("RGB")))


def test_cli_refuses_noise_with_exit_1(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(src)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", "classify", str(src), "--mpp", "0.5", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "noise" in proc.stderr + proc.stdout
    assert not list((tmp_path / "out").glob("noise_cells.*"))


@pytest.mark.parametrize("folder,true_mpp", [("brca_m2c/val", 0.5), ("gbm40", 0.25)])
def test_pixel_size_estimate_on_real_20x_and_40x(shared_data, folder, true_mpp):
    files = sorted((shared_data / folder).glob("*.jpg"))
    if not files:
        pytest.skip(f"{folder} absent from ../shared/data")
    estimates = []
    for f in files[:3]:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        est = estimate_mpp(pipeline.segment_nuclei(rgb, true_mpp), true_mpp)
        estimates.append(est.estimate)
        assert not est.disagrees
    assert abs(np.median(estimates) / true_mpp - 1) < 0.25, estimates


def test_pixel_size_warning_at_twice_the_pixel_size(shared_data):
    from napari_uam.pixel_size import PixelSizeWarning

    rgb = np.asarray(Image.open(sorted((shared_data / "gbm40").glob("*.jpg"))[0]).convert("RGB"))
    with pytest.warns(PixelSizeWarning, match="um/px"):
        pipeline.segment_nuclei(rgb, 0.5)  # a 40x field run as if 20x


def test_dataset_layer_reads_every_source(shared_data):
    sys.path.insert(0, str(REPO))
    from research.segmentation import nuclei_sets as N

    for name in N.SOURCES:
        ims = N.images(name, shared_data)
        assert ims, name
        im = ims[0]
        rgb = im.rgb()
        assert rgb.ndim == 3 and 0.2 <= im.mpp <= 0.6
        ann = im.instances() if im.kind == "instances" else im.points()
        assert (ann.max() > 0) if im.kind == "instances" else len(ann) > 0


def test_shipped_weights_load_weights_only():
    import torch

    ckpt = torch.load(REPO / "src/napari_uam/weights/nuclei_unet.pt", weights_only=True)
    assert ckpt["meta"]["recipe"].startswith("v3") and len(ckpt["meta"]["train_sources"]) == 8

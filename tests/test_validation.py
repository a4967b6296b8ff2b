"""Bad images and labels get a typed error with an actionable message; good ones are normalised."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_uam import pipeline
from napari_uam.errors import InvalidImageError, InvalidLabelsError
from napari_uam.validation import NotTissueError, as_labels, as_rgb_uint8, check_he_tissue

RGB = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image, message",
    [
        (RGB[..., 0], "grayscale"),
        (np.zeros((16, 16, 5), np.uint8), "5 channels"),
        (np.zeros((1, 1, 3), np.uint8), "at least"),
        (np.zeros((0, 16, 3), np.uint8), "at least"),
        (np.full((16, 16, 3), np.nan, np.float32), "NaN"),
        (np.full((16, 16, 3), 300.0), "Rescale"),
        (np.full((16, 16, 3), -1.0), "negative"),
        (np.zeros((2, 16, 16, 3), np.uint8), "2-D RGB"),
        (np.dstack([RGB, np.full((16, 16), 10, np.uint8)]), "transparent"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(InvalidImageError, match=message):
        as_rgb_uint8(image)


def test_accepted_images_are_normalised_without_touching_input():
    f01 = RGB.astype(np.float64) / 255.0
    assert np.array_equal(as_rgb_uint8(f01), RGB)
    assert np.array_equal(as_rgb_uint8(RGB.astype(np.uint16) * 257), RGB)
    rgba = np.dstack([RGB, np.full((16, 16), 255, np.uint8)])
    out = as_rgb_uint8(rgba)
    assert out.shape == (16, 16, 3) and np.array_equal(out, RGB)
    out[0, 0, 0] ^= 1
    assert rgba[0, 0, 0] == RGB[0, 0, 0]  # a copy: the user's data is never modified


def test_labels_checks():
    with pytest.raises(InvalidLabelsError, match="image is 16x16"):
        as_labels(np.zeros((8, 8), np.int32), (16, 16, 3))
    with pytest.raises(InvalidLabelsError, match="non-integer"):
        as_labels(np.full((4, 4), 0.5))
    with pytest.raises(InvalidLabelsError, match="negative"):
        as_labels(np.full((4, 4), -1))
    gaps = np.array([[0, 3], [7, 7]], np.uint16)
    assert as_labels(gaps).dtype == np.int32


# ------------------------------------------- the input check: brightfield H&E tissue or not (issue 15)
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
